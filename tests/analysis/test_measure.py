"""The paper's survey measure: the greedy T=0 answer is recorded beside the 0..10 distribution in
the same survey, analyses use it by default, the expected score is one switch away, and
distribution fallbacks and low option mass are never silent."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from debatelab.analysis import load
from debatelab.analysis.report import build_report
from debatelab.analysis.show import show_run
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.llm.base import OptionScores
from debatelab.llm.scripted import ScriptedLLM
from debatelab.prompts import SURVEY_PREFIX

from conftest import write_config


def _run(tmp_path: Path, bank: Path, llm: ScriptedLLM | None = None, **values: object) -> Path:
    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), **values))
    run_experiment(config, tmp_path / "run", llm=llm or ScriptedLLM())
    return tmp_path / "run"


def _attitudes(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "attitudes.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_each_survey_sends_a_greedy_request_at_t0_and_a_score_request_on_the_same_prompt(tmp_path, bank):
    llm = ScriptedLLM()
    _run(tmp_path, bank, llm)
    greedy = [r for batch in llm.generate_calls for r in batch if r.prompt.assistant_prefix == SURVEY_PREFIX]
    scored = [r for batch in llm.score_calls for r in batch]
    assert len(greedy) == len(scored) == 3 * (2 + 1) * 3  # debates x surveys x agents
    assert all(r.temperature == 0.0 for r in greedy)
    assert [r.prompt for r in greedy] == [r.prompt for r in scored]


def test_greedy_is_the_default_value_and_expected_is_one_switch_away(tmp_path, bank):
    # A greedy answer that disagrees with the distribution's mode, so the two measures differ.
    llm = ScriptedLLM(reply_fn=lambda r: "10" if r.prompt.assistant_prefix == SURVEY_PREFIX else "A reply.")
    run_dir = _run(tmp_path, bank, llm)
    rows = _attitudes(run_dir)
    assert {r["method"] for r in rows} == {"both"} and {r["score"] for r in rows} == {"10"}
    greedy = load(run_dir)
    assert greedy.measure == "greedy" and (greedy.surveys["value"] == 10.0).all()
    expected = load(run_dir, measure="expected")
    assert expected.measure == "expected"
    np.testing.assert_allclose(expected.surveys["value"], expected.surveys["expected_score"])
    assert not np.allclose(expected.surveys["value"], 10.0)


def test_the_config_measure_switch_and_its_validation(tmp_path, bank):
    run_dir = _run(tmp_path, bank, survey={"measure": "expected"})
    assert load(run_dir).measure == "expected"
    assert load(run_dir, measure="greedy").measure == "greedy"
    with pytest.raises(DebatelabError, match="not recorded"):
        load_config(write_config(tmp_path / "bad.yaml", survey={"method": "generate", "measure": "expected"}))


def test_a_distribution_only_run_cannot_be_read_with_the_greedy_measure(tmp_path, bank):
    run_dir = _run(tmp_path, bank, survey={"method": "logprobs"})
    assert load(run_dir).measure == "expected"
    with pytest.raises(DebatelabError, match="no 'greedy' survey measure"):
        load(run_dir, measure="greedy")


def test_invalid_greedy_answers_are_nan_never_guessed(tmp_path, bank):
    llm = ScriptedLLM(reply_fn=lambda r: "six or seven" if r.prompt.assistant_prefix == SURVEY_PREFIX else "Hi.")
    run_dir = _run(tmp_path, bank, llm)
    surveys = load(run_dir).surveys
    assert surveys["value"].isna().all() and not surveys["valid"].any()
    assert surveys["expected_score"].notna().all()  # the distribution is still there


class _NoLogprobs(ScriptedLLM):
    """A backend that, like an API without logprobs, parses its greedy answer into a one-hot."""

    def score_options(self, requests):
        super().score_options(requests)
        return [OptionScores((-math.inf,) * 4 + (0.0,) + (-math.inf,) * 6, source="generated", text="4")
                for _ in requests]


def test_fallbacks_are_counted_in_summary_export_show_and_report(tmp_path, bank):
    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
    summary = run_experiment(config, tmp_path / "run", llm=_NoLogprobs())
    assert summary.distributions == summary.surveys == 27 and summary.fallbacks == 27
    assert {r["source"] for r in _attitudes(tmp_path / "run")} == {"generated"}
    assert "distributions parsed from generated text (no logprobs): 27/27" in show_run(tmp_path / "run")
    html = build_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "27 of 27 distributions parsed from generated text" in html


def test_low_option_mass_warns_in_the_cli_show_and_report(tmp_path, bank, capsys):
    low = [math.log(0.02)] * 11  # 22 % of the mass on 0..10
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), model="scripted")
    import debatelab.llm.scripted as scripted

    original = scripted.default_scores
    scripted.default_scores = lambda request: low
    try:
        assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    finally:
        scripted.default_scores = original
    captured = capsys.readouterr()
    assert "mean option mass: 0.220" in captured.out
    assert "warning: mean option mass 0.220 < 0.5" in captured.err
    assert "WARNING: mean option mass 0.220 < 0.5" in show_run(tmp_path / "run")
    html = build_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "warning: under 0.5: only this share of the probability went to a bare number" in html


def test_show_prints_mean_and_se_per_topic_role_and_iteration(tmp_path, bank, capsys):
    run_dir = _run(tmp_path, bank)
    assert main(["show", str(run_dir)]) == 0
    out = capsys.readouterr().out
    surveys = load(run_dir).surveys
    for (role, iteration), group in surveys.groupby(["role", "iteration"]):
        values = group["value"].to_numpy()
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert f"{values.mean():.2f} ± {se:.2f}" in out, (role, iteration)
    assert "measure: greedy T=0 answer (the paper's measure)" in out and "invalid (greedy): 0/27" in out


class _TopFive(ScriptedLLM):
    """An API that returns only the top-5 options (the paper's gpt-3.5-turbo-instruct path)."""

    def score_options(self, requests):
        super().score_options(requests)
        return [OptionScores(tuple([math.log(0.2)] * 5 + [-math.inf] * 6), source="top_k") for _ in requests]


def test_partial_distributions_are_counted_in_summary_show_and_report(tmp_path, bank):
    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
    summary = run_experiment(config, tmp_path / "run", llm=_TopFive())
    assert summary.partial == summary.distributions == 27 and summary.fallbacks == 0
    assert "partial (only the API's top-k options scored): 27/27" in show_run(tmp_path / "run")
    html = build_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "27 of 27 distributions scored only the options in the API" in html


def test_show_reports_complete_debates_only_and_counts_the_rest(tmp_path, bank):
    class _OneFails(ScriptedLLM):
        def generate(self, requests):
            from debatelab.llm.base import Completion

            out = super().generate(requests)
            if len(self.generate_calls) == 1:  # the first request ever: that one debate fails
                out[0] = Completion("", error="boom")
            return out

    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
    summary = run_experiment(config, tmp_path / "run", llm=_OneFails())
    assert 0 < summary.complete < summary.debates
    text = show_run(tmp_path / "run")
    assert f"{summary.complete} complete, {summary.debates - summary.complete} failed (left out)" in text
    complete = load(tmp_path / "run", complete_only=True).surveys
    rows = [line.split() for line in text.splitlines() if line.startswith("climate_change")]
    assert rows and {int(r[-2]) for r in rows if r[1] != "default"} == {complete["debate_id"].nunique()}


def test_report_summary_says_which_measure_its_numbers_are(tmp_path, bank):
    import pandas as pd

    run_dir = _run(tmp_path, bank)
    for measure in ("greedy", "expected"):
        build_report([run_dir], tmp_path / measure, measure=measure)
        summary = pd.read_csv(tmp_path / measure / "summary.csv")
        assert set(summary["measure"]) == {measure}
        values = load(run_dir, complete_only=True, measure=measure).surveys
        first = values[(values["role"] == "republican") & (values["iteration"] == 0)]["value"].mean()
        row = summary[(summary["role"] == "republican") & (summary["iteration"] == 0)]
        assert row["mean"].item() == pytest.approx(first)
