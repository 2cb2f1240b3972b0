"""The measurement commands of the CLI: ``check-model`` (persona-fidelity preflight; with
``--against OTHER`` measurement invariance, :mod:`.invariance`), ``score-stance`` (a judge reads
every reply) and ``analyze`` (every metric as JSON records). Thin like :mod:`.cli`: each parses
options and calls one library function."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_io import check_output_file, seed, upto
from .config import MAX_PER_PARTY
from .errors import DebatelabError
from .files import write_json
from .llm.options import MAX_BATCH, BackendOptions

if TYPE_CHECKING:  # annotations only: the command imports what it runs when it runs
    from .topics import Topic
    from .types import Persona

MAX_PREFLIGHT_PER_PARTY = 500


def _cmd_check_model(args: argparse.Namespace) -> int:
    from .invariance import read_backend_options
    from .llm.registry import load_llm
    from .personas import load_bank
    from .preflight import run_preflight
    from .scales import SCALES
    from .topics import BUILTIN_TOPICS
    from .verdicts import save_verdict

    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.against_options is not None and args.against is None:
        raise DebatelabError("--against-options gives the options of --against OTHER, which is missing")
    unknown = [t for t in args.topics if t not in BUILTIN_TOPICS]
    if unknown:
        raise DebatelabError(f"unknown topic {unknown[0]!r} (known: {', '.join(BUILTIN_TOPICS)})")
    options = read_backend_options(args.options) if args.options is not None else None
    bank = load_bank(args.personas) if args.personas is not None else None
    if args.against is not None:
        return _check_invariance(args, [BUILTIN_TOPICS[t] for t in args.topics], bank, options)
    llm = load_llm(args.model, options)
    try:
        result = run_preflight(llm, args.model, [BUILTIN_TOPICS[t] for t in args.topics], args.per_party,
                               seed=args.seed, bank=bank, scale=SCALES[args.scale], measure=args.measure)
    finally:
        llm.close()
    result.checked_at = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    record = result.as_dict()
    print(_verdict_table(record))
    if args.json is not None:  # first: a cache that cannot be written must not lose the results
        write_json(args.json, record)
        print(f"json -> {args.json}")
    try:
        cached = save_verdict(record)
    except OSError as exc:
        print(f"warning: the verdict could not be recorded for run/reproduce warnings ({exc.strerror or exc})",
              file=sys.stderr)
        return 0
    print(f"verdict recorded for run/reproduce warnings -> {cached}")
    return 0


def _verdict_table(record: dict[str, Any]) -> str:
    def num(value: Any, fmt: str = "+.2f") -> str:
        return "   —" if value is None or value != value else format(value, fmt)

    lines = [f"persona fidelity of {record['model']} ({record['per_party']} personas per party, {record['scale']} "
             f"scale, {record['measure']} answer)",
             f"{'topic':22s} {'R':>6s} {'D':>6s} {'gap R-D':>8s} {'95% CI':>17s} {'human':>6s} {'mass':>6s} "
             f"{'invalid':>7s}  verdict"]
    for t in record["topics"]:
        human = {1: "R>D", -1: "R<D"}.get(t["human_sign"], "?")
        verdict = ("role-plays" if t["role_plays"] else "wrong way" if t["separates"] else "no separation")
        lines.append(f"{t['topic']:22s} {num(t['republican'], '.2f'):>6s} {num(t['democrat'], '.2f'):>6s} "
                     f"{num(t['gap']):>8s} [{num(t['gap_low'])}, {num(t['gap_high'])}]".ljust(64)
                     + f" {human:>6s} {num(t['option_mass'], '.3f'):>6s} {t['invalid']:>7d}  {verdict}")
    lines.append(f"verdict: {record['verdict']}")
    return "\n".join(lines)


def _check_invariance(args: argparse.Namespace, topics: list[Topic], bank: list[Persona] | None,
                      options: BackendOptions | None) -> int:
    """``check-model MODEL --against OTHER``: the same survey prompts on both; exit 0 either way."""
    from .invariance import read_backend_options, run_invariance
    from .scales import SCALES

    other_options = read_backend_options(args.against_options) if args.against_options is not None else None
    result = run_invariance(args.model, args.against, topics, args.per_party, options=options,
                            other_options=other_options, seed=args.seed, bank=bank, scale=SCALES[args.scale])
    result.checked_at = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    record = result.as_dict()
    print(_invariance_table(record))
    if args.json is not None:
        write_json(args.json, record)
        print(f"json -> {args.json}")
    return 0  # a measurement, not a test: NOT invariant is a finding, not a failure


def _invariance_table(record: dict[str, Any]) -> str:
    def num(value: Any, fmt: str = ".3f") -> str:
        return "—" if value is None else format(value, fmt)

    lines = [f"measurement invariance: A = {record['model']}, B = {record['against']} ({record['per_party']} "
             f"personas per party, {record['personas']}, {record['scale']} scale)"]
    for label, side in zip("AB", record["sides"].values()):
        exact = "exact text" if side["exact"] else "NOT exact (the server renders the chat template)"
        greedy = "" if side["how_generate"] == side["how_score"] else f"; greedy answers: {side['how_generate']}"
        lines.append(f"  {label}: {exact}; surveys scored: {side['how_score']}{greedy}"
                     + (f"; {side['failed']} failed requests" if side["failed"] else ""))
    lines.append(f"{'topic':22s} {'compared':>9s} {'|Δ exp|':>8s} {'|Δ greedy|':>10s} {'equal':>6s} {'TV':>6s} "
                 f"{'mass A':>7s} {'mass B':>7s} {'same prompt':>11s}")
    for t in [*record["topics"], record["overall"]]:
        n = t["surveys"]
        compared, same = f"{t['compared']}/{n}", f"{t['same_prompt_score']}/{n}"
        lines.append(f"{t['topic']:22s} {compared:>9s} {num(t['mean_abs_delta_expected']):>8s} "
                     f"{num(t['mean_abs_delta_greedy']):>10s} {num(t['greedy_equal_share'], '.2f'):>6s} "
                     f"{num(t['mean_tv']):>6s} {num(t['option_mass_model']):>7s} {num(t['option_mass_against']):>7s} "
                     f"{same:>11s}")
    lines.append(f"verdict: {record['verdict']}")
    return "\n".join(lines)


def _cmd_score_stance(args: argparse.Namespace) -> int:
    from .llm.registry import load_llm
    from .stance import score_stances

    if not (args.run_dir / "run.sqlite").is_file():
        raise DebatelabError(f"no run database in {args.run_dir} (expected run.sqlite)")
    llm = load_llm(args.judge)
    try:
        summary = score_stances(args.run_dir, args.judge, llm, method=args.method, batch_size=args.batch_size)
    finally:
        llm.close()
    print(f"{summary.scored} replies scored by {summary.judge} ({summary.invalid} invalid answers, "
          f"{summary.failed} failed requests); {summary.total} scored in all -> {args.run_dir / 'stances.csv'}")
    if summary.failed:
        print(f"error: {summary.failed} request(s) failed; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.frames import load
    from .analysis.instruments import all_metrics, write_records

    check_output_file(args.json, "--json")
    run = load(args.run_dir, complete_only=True, measure=args.measure)
    if run.surveys.empty:
        raise DebatelabError(f"run {args.run_dir} has no complete debate to analyze yet")
    reference = load(args.reference, complete_only=True, measure=args.measure) if args.reference else None
    if reference is not None and reference.surveys.empty:
        raise DebatelabError(f"reference run {args.reference} has no complete debate")
    if reference is not None and reference.scale is not run.scale:
        raise DebatelabError(f"reference run {args.reference} surveys on the {reference.scale.id} scale, "
                             f"run {args.run_dir} on {run.scale.id}: their default attitudes do not compare")
    humans = None
    if args.humans is not None:
        from .analysis.yardsticks import load_human_distributions

        humans = load_human_distributions(args.humans)
    table = all_metrics(run, reference=reference, humans=humans, seed=args.seed)
    if args.panel is not None:
        import pandas as pd

        from .analysis.panels import compare_with_panel, load_panel

        side = compare_with_panel(run.surveys, load_panel(args.panel), agent_scale=run.scale, seed=args.seed)
        table = pd.concat([table.assign(source="agents"), side.assign(metric="panel:" + side["metric"])],
                          ignore_index=True)
    count = write_records(table, args.json, run)
    print(f"{count} metric records -> {args.json}")
    return 0


def add_commands(sub: Any) -> None:
    """Register the measurement commands on the main parser's subcommands."""
    from .topics import BUILTIN_TOPICS

    check = sub.add_parser("check-model", help="persona-fidelity preflight: do partisan personas separate on this model?")
    check.add_argument("model", help="model string (e.g. embedded, hf:org/name, opinion-sim)")
    check.add_argument("--topics", nargs="+", default=list(BUILTIN_TOPICS), help="topic ids (default: the paper's four)")
    check.add_argument("--per-party", type=upto(min(MAX_PER_PARTY, MAX_PREFLIGHT_PER_PARTY)), default=10,
                       help="personas per party, each surveyed once per topic (default 10)")
    check.add_argument("--personas", type=Path, help="persona bank (JSONL) instead of generating personas")
    check.add_argument("--scale", choices=["0-10", "pew4"], default="0-10", help="survey scale (default 0-10)")
    check.add_argument("--measure", choices=["greedy", "expected"], default="greedy",
                       help="attitude compared (default: the paper's greedy T=0 answer; --against reports both)")
    check.add_argument("--seed", type=seed, default=0)
    check.add_argument("--json", type=Path, help="also write the verdict and every number here")
    check.add_argument("--options", type=Path, metavar="FILE",
                       help="backend options of MODEL (a YAML mapping, the keys of a config's backend:)")
    check.add_argument("--against", metavar="OTHER",
                       help="measurement invariance instead: the same survey prompts on OTHER, compared with MODEL")
    check.add_argument("--against-options", type=Path, metavar="FILE",
                       help="backend options of OTHER (e.g. base_url, api, chat_template, tokenizer for openai:)")
    check.set_defaults(func=_cmd_check_model)

    stance = sub.add_parser("score-stance", help="a judge model rates the stance of every reply of a run (stances.csv)")
    stance.add_argument("run_dir", type=Path)
    stance.add_argument("--judge", required=True, help="judge model string; it sees only the topic and one reply")
    stance.add_argument("--method", choices=["both", "generate", "logprobs"], default="both",
                        help="greedy answer and/or 0..10 distribution (default both)")
    stance.add_argument("--batch-size", type=upto(MAX_BATCH), default=64, help="replies per committed batch")
    stance.set_defaults(func=_cmd_score_stance)

    analyze = sub.add_parser("analyze", help="every metric of a run as JSON records {metric, topic, role, estimate, ...}")
    analyze.add_argument("run_dir", type=Path)
    analyze.add_argument("--json", type=Path, required=True, help="where to write the records")
    analyze.add_argument("--reference", type=Path, help="run whose Default agent gives the model's default attitude")
    analyze.add_argument("--humans", type=Path, help="CSV of human answer distributions (representativeness)")
    analyze.add_argument("--panel", type=Path,
                         help="human discussion panel CSV (docs/human-panels.md): its metrics beside the agents'")
    analyze.add_argument("--measure", choices=["greedy", "expected"], help="survey measure (default: the run's own)")
    analyze.add_argument("--seed", type=seed, default=0, help="bootstrap seed")
    analyze.set_defaults(func=_cmd_analyze)
