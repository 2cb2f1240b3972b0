"""The roofline of a whole run (``python -m debatelab.bench.run_roofline``): a tiny random Llama
runs a small config through the real engine, and its report's needed work must match the bench
tracer's accounting; a backend without a tracer reports none; bad input is one line, exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from debatelab.bench import roofline
from debatelab.bench.run_roofline import main, traced_run
from debatelab.config import load_config

from conftest import write_config


@pytest.fixture
def small_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roofline.peak, "SQUARES", (128,))
    monkeypatch.setattr(roofline.peak, "MLP_ROWS", 64)
    monkeypatch.setattr(roofline.peak, "SHAPE_BUDGET_S", 0.02)


def test_traced_run_reports_the_runs_bound_and_efficiency(tmp_path, bank, tiny_model_dir, small_peak):
    cfg = load_config(write_config(tmp_path / "c.yaml", model=f"hf:{tiny_model_dir}", personas=str(bank),
                                   repetitions=2, rounds=1, reply={"max_tokens": 6},
                                   backend={"device": "cpu", "threads": 1}))
    report = traced_run(cfg, tmp_path / "run")
    assert report["complete"] == report["debates"] == 2 and report["admission"] == "staggered"
    with (tmp_path / "run/turns.csv").open() as fh:
        turns = list(csv.DictReader(fh))
    line = report["roofline"]
    generated = sum(int(t["completion_tokens"]) for t in turns)
    assert line["generated_tokens"] >= generated > 0  # and the greedy survey answers' tokens
    assert 0 < line["needed_prompt_tokens"] <= line["prompt_tokens"]
    assert line["computed_prompt_tokens"] >= line["needed_prompt_tokens"]
    assert line["bound_s"] == pytest.approx(line["needed_gflop"] / line["peak"]["gflops"])
    assert line["efficiency"] == pytest.approx(line["bound_s"] / report["run_s"])
    assert report["peak_rss_gib"] > 0 and report["machine"]["cpu_model"]


def test_scripted_run_has_no_roofline_and_bad_config_is_one_line(tmp_path, bank, capsys):
    out = tmp_path / "r.json"
    assert main([str(write_config(tmp_path / "c.yaml", personas=str(bank))), "--out", str(tmp_path / "run"),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["roofline"] is None and report["complete"] == 3
    capsys.readouterr()
    assert main([str(write_config(tmp_path / "bad.yaml", rounds=0)), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
