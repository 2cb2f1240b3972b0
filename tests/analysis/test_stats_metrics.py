"""Aggregation and metrics on constructed data with known answers, checked against scipy/numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from debatelab.analysis.frames import RunData, load
from debatelab.analysis.metrics import metric_table
from debatelab.analysis.stats import aggregate, summarise


def surveys_from(trajectories: dict[tuple[str, str, int], list[float]], topic: str = "racism") -> pd.DataFrame:
    """{(debate_id, role, agent_index): [values at iterations 0, 3, 6, ...]} -> surveys frame."""
    rows = [{"topic": topic, "debate_id": d, "role": role, "agent_index": a, "iteration": 3 * k, "value": v}
            for (d, role, a), values in trajectories.items() for k, v in enumerate(values)]
    return pd.DataFrame(rows)


def run_of(surveys: pd.DataFrame, agents: list[str]) -> RunData:
    empty = pd.DataFrame()
    return RunData(Path("."), empty, empty, empty, surveys, meta={"config": {"agents": agents}})


def test_summarise_matches_scipy():
    x = np.random.default_rng(1).normal(6, 2, size=37)
    s = summarise(x)
    assert s["n"] == 37 and s["mean"] == pytest.approx(x.mean())
    assert s["sd"] == pytest.approx(np.std(x, ddof=1)) and s["se"] == pytest.approx(sps.sem(x))
    low, high = sps.t.interval(0.95, 36, loc=x.mean(), scale=sps.sem(x))
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(low), pytest.approx(high))


def test_aggregate_groups_and_skips_invalid():
    rng = np.random.default_rng(2)
    traj = {(f"d{i}", role, j): list(rng.uniform(0, 10, 3)) for i in range(8)
            for j, role in enumerate(["republican", "democrat", "default"])}
    surveys = surveys_from(traj)
    surveys.loc[0, "value"] = np.nan
    agg = aggregate(surveys)
    assert len(agg) == 3 * 3
    rep0 = agg[(agg.role == "republican") & (agg.iteration == 0)].iloc[0]
    values = surveys[(surveys.role == "republican") & (surveys.iteration == 0)]["value"].dropna()
    assert rep0["n"] == len(values) == 7 and rep0["invalid"] == 1
    assert rep0["se"] == pytest.approx(sps.sem(values))


def test_repeated_roles_agent_vs_debate_units():
    traj = {("d1", "republican", 0): [2.0], ("d1", "republican", 1): [4.0],
            ("d2", "republican", 0): [6.0], ("d2", "republican", 1): [10.0]}
    surveys = surveys_from(traj)
    per_agent = aggregate(surveys, unit="agent").iloc[0]
    per_debate = aggregate(surveys, unit="debate").iloc[0]
    assert per_agent["n"] == 4 and per_agent["mean"] == pytest.approx(5.5)
    assert per_debate["n"] == 2 and per_debate["mean"] == pytest.approx(5.5)
    assert per_debate["se"] == pytest.approx(sps.sem([3.0, 8.0]))


def _metric(table: pd.DataFrame, metric: str, role: str) -> pd.Series:
    return table[(table.metric == metric) & (table.role == role)].iloc[0]


@pytest.mark.parametrize("last, expected", [(8.0, 1.0), (2.0, 0.0), (5.0, 0.5), (1.0, -1 / 6)])
def test_convergence_to_default_known_answers(last, expected):
    traj = {}
    for i in range(6):
        traj[(f"d{i}", "republican", 0)] = [2.0 + 0.1 * (i % 2), 0.0, last + 0.1 * (i % 2)]
        traj[(f"d{i}", "default", 1)] = [8.05, 8.0, 8.0]
    table = metric_table(run_of(surveys_from(traj), ["republican", "default"]))
    row = _metric(table, "convergence_to_default", "republican")
    assert row["estimate"] == pytest.approx(expected, abs=1e-9)
    assert row["ci_low"] <= row["estimate"] <= row["ci_high"] and row["n"] == 6
    assert "rough" in row["reading"]  # 6 debates: the reading warns


def test_convergence_uses_reference_run_when_default_absent():
    traj = {(f"d{i}", "democrat", 0): [9.0, 7.0] for i in range(3)}
    reference = run_of(surveys_from({("r", "default", 0): [5.0, 5.0]}), ["default"])
    row = _metric(metric_table(run_of(surveys_from(traj), ["democrat", "democrat"]), reference),
                  "convergence_to_default", "democrat")
    assert row["estimate"] == pytest.approx(0.5)
    assert metric_table(run_of(surveys_from(traj), ["democrat"])).query("metric == 'convergence_to_default'").empty


def test_echo_chamber_index_signs_and_debate_unit():
    intensify = {(f"d{i}", "republican", a): [3.0 - 0.1 * a, 1.0 - 0.1 * i] for i in range(5) for a in (0, 1)}
    moderate = {(f"d{i}", "republican", a): [1.0 + 0.1 * a, 4.0 - 0.1 * i] for i in range(5) for a in (0, 1)}
    up = _metric(metric_table(run_of(surveys_from(intensify), ["republican", "republican"])), "echo_chamber_index", "republican")
    down = _metric(metric_table(run_of(surveys_from(moderate), ["republican", "republican"])), "echo_chamber_index", "republican")
    assert up["estimate"] > 0 and "intensified" in up["reading"]
    assert down["estimate"] < 0 and "moderated" in down["reading"]
    # the two seats of a debate are averaged first: n counts debates, not agents
    first = np.full(5, 2.95)
    last = np.array([1.0 - 0.1 * i for i in range(5)])
    change = -(last - first)  # the party started below the midpoint, so lower is more extreme
    assert up["n"] == 5 and up["estimate"] == pytest.approx(change.mean())
    assert up["p_value"] == pytest.approx(sps.ttest_rel(first - last, np.zeros(5)).pvalue)
    # not reported when each party has a single seat
    assert metric_table(run_of(surveys_from(intensify), ["republican", "democrat"])).query("metric == 'echo_chamber_index'").empty


def test_echo_crossing_the_midpoint_is_moderation_and_noise_is_no_verdict():
    crossing = {(f"d{i}", "republican", a): [4.0, 8.0 + 0.1 * i] for i in range(4) for a in (0, 1)}
    row = _metric(metric_table(run_of(surveys_from(crossing), ["republican", "republican"])), "echo_chamber_index", "republican")
    assert row["estimate"] < 0 and "moderated" in row["reading"]
    noisy = {(f"d{i}", "democrat", a): [7.0, 7.0 + (1 if i % 2 else -1) * (0.5 + 0.1 * i)] for i in range(6) for a in (0, 1)}
    row = _metric(metric_table(run_of(surveys_from(noisy), ["democrat", "democrat"])), "echo_chamber_index", "democrat")
    assert row["ci_low"] < 0 < row["ci_high"] and "no clear" in row["reading"]


def test_change_first_to_last_matches_scipy_and_invalid_rate():
    rng = np.random.default_rng(3)
    first, last = rng.uniform(2, 8, 12), rng.uniform(2, 8, 12)
    traj = {(f"d{i}", "democrat", 0): [first[i], last[i]] for i in range(12)}
    surveys = surveys_from(traj)
    surveys.loc[len(surveys)] = {"topic": "racism", "debate_id": "bad", "role": "democrat", "agent_index": 0,
                                 "iteration": 0, "value": np.nan}
    table = metric_table(run_of(surveys, ["democrat", "default"]))
    row = _metric(table, "change_first_to_last", "democrat")
    assert row["estimate"] == pytest.approx((last - first).mean()) and row["n"] == 12
    assert row["p_value"] == pytest.approx(sps.ttest_rel(last, first).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(last - first).pvalue)
    assert row["n"] == 12 and "debates" in row["reading"]
    bad = _metric(table, "invalid_rate", "democrat")
    assert bad["estimate"] == pytest.approx(1 / 25) and bad["ci_low"] < 1 / 25 < bad["ci_high"]


def test_convergence_interval_reflects_default_uncertainty():
    traj = {}
    for i in range(12):
        traj[(f"d{i}", "republican", 0)] = [2.0 + 0.2 * (i % 3), 0.0, 5.0 + 0.3 * (i % 4)]
        traj[(f"d{i}", "default", 1)] = [8.0 + (0.8 if i % 2 else -0.8), 8.0, 8.0]
    fixed = dict(traj)
    for i in range(12):
        fixed[(f"d{i}", "default", 1)] = [8.0, 8.0, 8.0]
    varying = _metric(metric_table(run_of(surveys_from(traj), ["republican", "default"])), "convergence_to_default", "republican")
    steady = _metric(metric_table(run_of(surveys_from(fixed), ["republican", "default"])), "convergence_to_default", "republican")
    assert varying["estimate"] == pytest.approx(steady["estimate"])  # same mean D0
    assert varying["ci_high"] - varying["ci_low"] > steady["ci_high"] - steady["ci_low"]


def test_no_valid_pairs_reads_plainly():
    traj = {("d0", "democrat", 0): [np.nan, 6.0]}
    row = _metric(metric_table(run_of(surveys_from(traj), ["democrat", "default"])), "change_first_to_last", "democrat")
    assert row["n"] == 0 and "not computed" in row["reading"] and "nan" not in row["reading"]


def test_load_real_run_frames(tmp_path):
    from conftest import make_bank, write_config

    from debatelab.config import load_config
    from debatelab.experiment import run_experiment
    from debatelab.llm.scripted import ScriptedLLM

    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(make_bank(tmp_path / "b.jsonl"))))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    data = load(tmp_path / "run")
    assert len(data.debates) == 3 and set(data.surveys.role) == {"republican", "democrat", "default"}
    # the paper's measure by default: the greedy T=0 answer, parsed (NaN where it is no rating)
    surveys = data.surveys
    assert data.measure == "greedy" and (surveys["method"] == "both").all()
    assert surveys["value"].equals(surveys["score"].astype(float).where(surveys["valid"]))
    assert surveys["valid"].all()  # the scripted model answers every survey with a number
    expected = load(tmp_path / "run", measure="expected").surveys
    assert expected["value"].equals(expected["expected_score"])
    assert not np.allclose(expected["value"], surveys["value"])  # the two measures really differ
    merged = data.turns.merge(data.agents, on=["debate_id", "agent_index"], suffixes=("", "_a"))
    assert len(merged) == len(data.turns) and (merged.agent == merged.agent_a).all()
    assert data.name == "c" and data.config["rounds"] == 2


def test_merge_runs_stacks_frames(tmp_path):
    from conftest import make_bank, write_config

    from debatelab.analysis.frames import merge_runs
    from debatelab.config import load_config
    from debatelab.experiment import run_experiment
    from debatelab.llm.scripted import ScriptedLLM

    bank = str(make_bank(tmp_path / "b.jsonl"))
    runs = []
    for seed in (0, 1):
        cfg = load_config(write_config(tmp_path / f"c{seed}.yaml", personas=bank))
        run_experiment(cfg, tmp_path / f"run{seed}", llm=ScriptedLLM(f"seed{seed}"))
        runs.append(load(tmp_path / f"run{seed}"))
    merged = merge_runs(runs, "after")
    assert merged.name == "after" and len(merged.surveys) == sum(len(r.surveys) for r in runs)
    assert merged.surveys.debate_id.nunique() == 6
    pooled = aggregate(merged.surveys)
    assert pooled["n"].sum() == aggregate(runs[0].surveys)["n"].sum() * 2
