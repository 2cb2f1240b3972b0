"""`debatelab bench --society` on the scripted backend: the report's fields and their agreement
with the run's own database and exports, and one-line refusals of bad input (no timing asserts:
machines vary)."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from debatelab.bench.society import (RssTimeline, SocietyBenchSettings, format_society_report, memory_growth,
                                     run_society_bench)
from debatelab.cli import main
from debatelab.errors import EXIT_BAD_INPUT
from debatelab.society.engine import PROBES

POPULATION, STEPS = 300, 3
TOP_KEYS = {"workload", "machine", "agents", "edges", "steps", "encounters", "replies", "notes", "surveys",
            "seconds", "encounters_per_s", "surveys_per_s", "replies_per_s", "start_rss_mb", "peak_rss_mb",
            "memory_growth_mb", "per_step", "export", "tokens", "prefix_cache", "prompt_tokens_reused_share",
            "complete", "incomplete", "roofline"}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _check_report(report: dict, population: int, steps: int) -> None:
    assert TOP_KEYS <= report.keys()
    assert report["agents"] == population and report["steps"] == steps and report["complete"]
    assert report["surveys"] == population * (steps + 1) + PROBES
    per_step = report["per_step"]
    assert [s["step"] for s in per_step] == list(range(steps + 1))
    assert per_step[0]["surveys"] == population + PROBES and per_step[0]["encounters"] == 0
    assert all(s["surveys"] == population and s["encounters"] > 0 for s in per_step[1:])
    for key in ("encounters", "replies", "notes", "surveys"):
        assert report[key] == sum(s[key] for s in per_step), key
    assert report["replies"] == 2 * report["encounters"]  # pairs, one round
    assert all(s["seconds"] >= 0 and s["peak_rss_mb"] > 0 for s in per_step)
    assert report["seconds"] >= sum(s["seconds"] for s in per_step)
    assert report["peak_rss_mb"] >= max(s["peak_rss_mb"] for s in per_step) > 0
    assert report["encounters_per_s"] > 0 and report["surveys_per_s"] > 0
    assert report["prefix_cache"] is None and report["prompt_tokens_reused_share"] is None  # scripted keeps none
    assert report["roofline"] is None  # no FLOPs behind a script (the tiny model's: test_bench_roofline.py)
    assert report["tokens"]["completion_tokens"] > 0
    assert report["machine"]["cpu_model"] and report["machine"]["cpu_count"]
    json.dumps(report)


def test_cli_json_agrees_with_the_runs_database(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--society", "--model", "scripted", "--population", str(POPULATION), "--steps", str(STEPS),
            "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "encounters" in printed and "memory:" in printed and f"json -> {out}" in printed
    report = json.loads(out.read_text())
    _check_report(report, POPULATION, STEPS)
    assert report["workload"]["model"] == "scripted" and report["workload"]["memory"] == "turns"

    # The same settings again, its run kept: the counts are the run's own (same seed, same society).
    run_dir = tmp_path / "run"
    kept = run_society_bench(SocietyBenchSettings(model="scripted", population=POPULATION, steps=STEPS,
                                                  run_dir=run_dir))
    assert {k: kept[k] for k in ("encounters", "replies", "surveys")} == \
        {k: report[k] for k in ("encounters", "replies", "surveys")}
    assert [s["encounters"] for s in kept["per_step"]] == [s["encounters"] for s in report["per_step"]]
    encounters = _csv_rows(run_dir / "encounters.csv")
    assert len(encounters) == report["encounters"]
    db = sqlite3.connect(run_dir / "run.sqlite")
    try:
        units = dict(db.execute("SELECT step, COUNT(*) FROM society_units WHERE kind = 'encounter' GROUP BY step"))
        surveys = db.execute("SELECT COUNT(*) FROM surveys").fetchone()[0]
        turns = db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    finally:
        db.close()
    assert units == {s["step"]: s["encounters"] for s in report["per_step"] if s["step"]}
    assert surveys == report["surveys"] and turns == report["replies"]


def test_summary_memory_counts_the_notes(tmp_path):
    report = run_society_bench(SocietyBenchSettings(model="scripted", population=60, steps=2, memory="summary",
                                                    network="erdos_renyi", max_tokens=12))
    _check_report(report, 60, 2)
    assert report["notes"] == 2 * report["encounters"]  # each agent of a pair writes its note
    assert "notes" in format_society_report(report)


@pytest.mark.parametrize("argv, words", [
    (["--society", "--population", "1"], "--population"),
    (["--society", "--steps", "0"], "--steps"),
    (["--society", "--memory", "forever"], "--memory"),
    (["--society", "--network", "edge_list"], "--network"),
    (["--society", "--debates", "3"], "--debates is not an option of --society"),
    (["--population", "50"], "--population needs --society"),
    (["--society", "--population", "4"], "network.degree"),
    (["--society", "--network", "complete", "--population", "5000"], "complete graph"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    try:
        code = main(["bench", "--model", "scripted", *argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err, err


def test_memory_growth_and_peak_windows():
    steps = [{"peak_rss_mb": mb} for mb in (50, 100, 101, 102, 103, 104, 110)]  # step 0, then 6 steps
    assert memory_growth(steps) == 110 - 101  # last two of steps 1..6 minus the first two
    assert memory_growth(steps[:2]) == 0.0
    rss = RssTimeline(1.0)
    rss.samples = [(0.0, 10), (1.0, 30), (2.0, 20), (3.0, 40)]
    assert rss.peak(0.5, 2.0) == 30 and rss.peak(2.0, 3.0) == 40
    assert rss.peak(1.2, 1.8) == 20  # no sample inside: the first after it
    assert rss.peak(3.5, 4.0) == 40  # nor after it: the last


def test_report_says_the_share_of_prompt_tokens_reused():
    step = {"step": 0, "seconds": 1.0, "encounters": 0, "replies": 0, "notes": 0, "surveys": 5, "peak_rss_mb": 9.0}
    report = {"workload": {"network": "watts_strogatz", "degree": 6.0, "encounter_size": 2, "rounds": 1,
                           "memory": "turns", "max_tokens": 32, "model": "embedded"},
              "machine": {"cpu_count": 2, "cpu_model": "cpu", "dtype": "float32"}, "agents": 2, "edges": 1,
              "steps": 0, "per_step": [step], "export": {"seconds": 0.1, "peak_rss_mb": 9.0}, "seconds": 1.1,
              "encounters": 0, "encounters_per_s": 0.0, "surveys": 5, "surveys_per_s": 4.5, "replies": 0,
              "replies_per_s": 0.0, "notes": 0, "peak_rss_mb": 9.0, "start_rss_mb": 8.0, "memory_growth_mb": 0.0,
              "complete": True, "incomplete": 0,
              "prefix_cache": {"reused_share": 0.6, "prompt_tokens": 800, "hits": 3, "lookups": 4, "evictions": 0}}
    assert "60 % of 800 prompt tokens reused" in format_society_report(report)
