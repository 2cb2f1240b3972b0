"""The lab's comparison table on known-answer runs (opinion-sim): a method whose partisans are
pulled less measures so; one run and topic reproduce the analysis instruments; pooling over topics
and runs matches numpy/statsmodels computed here; intervals are seeded and redraw whole debates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml
from conftest import make_bank
from scipy import stats as sps

from debatelab.analysis.attractor import fit_attractor, transitions
from debatelab.analysis.consistency import consistency_rows, pair_stances
from debatelab.analysis.frames import load
from debatelab.analysis.metrics import metric_table
from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.lab import measures
from debatelab.lab.measures import BETTER, COLUMNS, METRICS, delta_vs, method_metrics
from debatelab.lab.quality import reply_texts
from debatelab.llm.registry import load_llm
from debatelab.stance import score_stances

BASE = "opinion-sim:pull=0.4,influence=0.1,noise=0.2"
HOLDS = "opinion-sim:pull=0.05,influence=0.1,noise=0.2"
TOPICS = ["climate_change", "gun_violence"]
ROSTERS = {"three_way": ["republican", "democrat", "default"], "echo_r": ["republican", "republican", "default"],
           "echo_d": ["democrat", "democrat", "default"]}


def _run(root: Path, name: str, agents: list, topics=TOPICS, judge: bool = True, reps: int = 10) -> Path:
    path = root / f"{name}.yaml"
    # the expected score: the greedy answer's rounding biases the pull (analysis.attractor's docstring)
    path.write_text(yaml.safe_dump({"model": BASE, "agents": agents, "topics": topics, "rounds": 3,
                                    "repetitions": reps, "seed": 3, "personas": str(root.parent / "bank.jsonl"),
                                    "survey": {"measure": "expected"}}))
    run_dir = root / name
    run_experiment(load_config(path), run_dir)
    if judge:
        score_stances(run_dir, BASE, load_llm(BASE))
    return run_dir


def _seat(role: str, model: str | None) -> str | dict:
    # the lab's way: a method changes the partisans' seats, the Default agent stays on the base model
    return role if model is None or role == "default" else {"role": role, "model": model}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("lab")
    make_bank(root / "bank.jsonl")
    runs = {}
    for method, model in (("baseline", None), ("simulated", HOLDS)):
        (root / method).mkdir()
        runs[method] = [_run(root / method, name, [_seat(r, model) for r in roster])
                        for name, roster in ROSTERS.items()]
    return runs


@pytest.fixture(scope="module")
def table(lab: dict[str, list[Path]]) -> pd.DataFrame:
    return method_metrics(lab, n_boot=300, seed=1)


def _est(table: pd.DataFrame, method: str, metric: str, role: str) -> pd.Series:
    return table.set_index(["method", "metric", "role"]).loc[(method, metric, role)]


def test_the_table_has_a_row_per_method_metric_and_role_in_order(table):
    assert list(table.columns) == COLUMNS and set(BETTER) == set(METRICS)
    assert list(table["method"].unique()) == ["baseline", "simulated"]
    assert table.groupby("method")["metric"].apply(lambda s: list(dict.fromkeys(s))).tolist() == [list(METRICS)] * 2
    assert len(table) == 2 * len(METRICS) * 2 and set(table["role"]) == {"republican", "democrat"}
    finite = table.dropna(subset=["estimate", "low", "high"])
    assert ((finite["low"] <= finite["estimate"] + 1e-12) & (finite["estimate"] <= finite["high"] + 1e-12)).all()
    assert table["reading"].str.len().gt(40).all() and not table["reading"].str.contains("\n").any()


def test_a_method_with_a_known_smaller_pull_measures_smaller(table):
    for role in ("republican", "democrat"):
        base, sim = (_est(table, m, "attractor_pull", role) for m in ("baseline", "simulated"))
        assert base["estimate"] == pytest.approx(0.4, abs=0.06) and base["low"] < 0.4 < base["high"]
        assert sim["estimate"] == pytest.approx(0.05, abs=0.05) and sim["high"] < base["low"]
        conv = {m: _est(table, m, "convergence_to_default", role)["estimate"] for m in ("baseline", "simulated")}
        assert conv["simulated"] < conv["baseline"] - 0.3
        # pulled to the Default agent's centre, same-party agents moderate (< 0); held, much less so
        echo = {m: _est(table, m, "echo_chamber_index", role) for m in ("baseline", "simulated")}
        assert echo["baseline"]["high"] < 0 and echo["simulated"]["estimate"] > echo["baseline"]["high"]
        assert _est(table, "baseline", "survey_behaviour_consistency", role)["estimate"] > 0.8
        assert _est(table, "simulated", "invalid_rate", role)["estimate"] == 0.0
    assert "they moderated" in _est(table, "baseline", "echo_chamber_index", "republican")["reading"]


def test_one_run_and_topic_reproduce_the_instruments(tmp_path):
    make_bank(tmp_path / "bank.jsonl")
    (tmp_path / "m").mkdir()
    roster = ["republican", "republican", "democrat", "default"]
    run_dir = _run(tmp_path / "m", "echo", roster, topics=["climate_change"])
    row = method_metrics({"only": [run_dir]}, n_boot=200, seed=4).set_index(["metric", "role"])
    run = load(run_dir)
    mine = pd.DataFrame(metric_table(run, seed=4, n_boot=200)).set_index(["metric", "role"])
    for metric in ("convergence_to_default", "echo_chamber_index", "invalid_rate"):
        expected = mine.loc[(metric, "republican"), "estimate"]
        assert row.loc[(metric, "republican"), "estimate"] == pytest.approx(expected)
    fits = {(r["metric"], r["role"]): r for r in fit_attractor(run.surveys, seed=4, n_boot=200)}
    pull, own = row.loc[("attractor_pull", "democrat")], fits[("attractor_pull", "democrat")]
    assert (pull["estimate"], pull["low"], pull["high"], pull["n"]) == pytest.approx(
        (own["estimate"], own["ci_low"], own["ci_high"], own["n"]))
    said = {(r["metric"], r["role"]): r for r in consistency_rows(run.stances, run.surveys, n_boot=10)}
    assert row.loc[("survey_behaviour_consistency", "republican"), "estimate"] == pytest.approx(
        said[("stance_survey_correlation", "republican")]["estimate"])


def _stacked(dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = [load(d) for d in dirs]
    def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat([f.assign(run=i, debate_id=f"{i}:" + f["debate_id"]) for i, f in enumerate(frames)],
                         ignore_index=True)

    return stack([r.surveys for r in runs]), stack([r.stances for r in runs])


def _manual_convergence(surveys: pd.DataFrame, role: str) -> float:
    num = den = 0.0
    for _, g in surveys.groupby(["run", "topic"]):
        d0 = g[(g["role"] == "default") & (g["iteration"] == 0)].groupby("debate_id")["value"].mean()
        ends = g[g["role"] == role].pivot_table(index="debate_id", columns="iteration", values="value")
        if ends.empty:
            continue
        ends = ends.iloc[:, [0, -1]].dropna().join(d0.rename("d0"), how="inner")
        first, last, d = ends.iloc[:, 0].mean(), ends.iloc[:, 1].mean(), ends["d0"].mean()
        num, den = num + len(ends) * np.sign(first - d) * (first - last), den + len(ends) * abs(first - d)
    return num / den


def test_pooling_over_topics_and_runs_matches_numpy_and_statsmodels(lab, table):
    surveys, stances = _stacked(lab["baseline"])
    for role in ("republican", "democrat"):
        assert _est(table, "baseline", "convergence_to_default", role)["estimate"] == pytest.approx(
            _manual_convergence(surveys, role))
        moves = transitions(surveys)
        mine = moves[moves["role"] == role]
        seated = surveys[surveys["debate_id"].isin(mine["debate_id"])]  # D from the role's own debates
        d0 = seated[(seated["role"] == "default") & (seated["iteration"] == 0)].groupby(
            ["topic", "debate_id"])["value"].mean().groupby("topic").mean()
        design = np.column_stack([np.ones(len(mine)), mine["topic"].map(d0) - mine["x"], mine["m"] - mine["x"]])
        fit = sm.OLS(mine["dx"].to_numpy(), design).fit()
        assert _est(table, "baseline", "attractor_pull", role)["estimate"] == pytest.approx(fit.params[1])
        assert _est(table, "baseline", "attractor_pull", role)["n"] == len(mine)
        rs, ws = [], []
        for (run, topic), g in surveys.groupby(["run", "topic"]):
            pairs = pair_stances(stances[(stances["run"] == run) & (stances["topic"] == topic)], g)
            pairs = pairs[pairs["role"] == role]
            if len(pairs) >= 3:
                rs.append(sps.pearsonr(pairs["stance"], pairs["survey"]).statistic)
                ws.append(len(pairs))
        assert _est(table, "baseline", "survey_behaviour_consistency", role)["estimate"] == pytest.approx(
            np.average(rs, weights=ws))


def test_the_echo_chamber_index_pools_same_party_debates_whatever_the_seats_say(lab, table):
    # the simulated method's partisans are dict seats ({role, model}); same-party debates are read
    # from who sat in each debate, not from role strings in the config
    for method in ("baseline", "simulated"):
        surveys, _ = _stacked(lab[method][1:2])  # echo_r alone: every Republican debate is same-party
        changes = []
        for _, g in surveys[surveys["role"] == "republican"].groupby("topic"):
            ends = g.groupby(["debate_id", "iteration"])["value"].mean().unstack().iloc[:, [0, -1]].dropna()
            side = np.sign(ends.iloc[:, 0].mean() - 5.0)
            changes += list(side * (ends.iloc[:, 1] - ends.iloc[:, 0]))
        row = _est(table, method, "echo_chamber_index", "republican")
        assert row["estimate"] == pytest.approx(np.mean(changes)) and row["n"] == len(changes)


def test_intervals_are_seeded(lab, table):
    again = method_metrics({"baseline": lab["baseline"]}, n_boot=300, seed=1)
    pd.testing.assert_frame_equal(again, table[table["method"] == "baseline"].reset_index(drop=True))
    other = method_metrics({"baseline": lab["baseline"]}, n_boot=300, seed=2)
    assert (other["estimate"].fillna(-1) == again["estimate"].fillna(-1)).all()
    assert not np.allclose(other["low"].fillna(0), again["low"].fillna(0))


def test_the_bootstrap_redraws_whole_debates_within_each_stratum():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 20)
    rows = {"debate": np.repeat(np.arange(20), 10), "value": np.repeat(values, 10)}  # ten identical rows each

    def mean(ps):
        return float(np.concatenate([p["value"] for p in ps]).mean())

    low, high = measures._interval([rows], mean, 0, 2000)
    iid = [rng.choice(rows["value"], 200).mean() for _ in range(2000)]
    assert high - low > 2.5 * np.subtract(*np.percentile(iid, [97.5, 2.5]))
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / np.sqrt(20), rel=0.25)
    small, big = {"debate": np.arange(3), "value": np.zeros(3)}, {"debate": np.arange(3, 40), "value": np.ones(37)}
    assert measures._interval([small, big], lambda ps: len(ps[0]["value"]), 0, 50) == (3, 3)


def test_without_stances_consistency_is_a_nan_row_that_says_why(tmp_path):
    make_bank(tmp_path / "bank.jsonl")
    (tmp_path / "m").mkdir()
    run_dir = _run(tmp_path / "m", "three", ROSTERS["three_way"], topics=["climate_change"], judge=False, reps=4)
    row = _est(method_metrics({"baseline": [run_dir]}, n_boot=50), "baseline", "survey_behaviour_consistency",
               "democrat")
    assert np.isnan(row["estimate"]) and row["n"] == 0 and "no stance scores" in row["reading"]


def test_perplexity_rows_are_geometric_means_of_the_given_arrays(lab):
    replies = pd.concat([reply_texts(d) for d in lab["baseline"]], ignore_index=True)
    values = np.random.default_rng(3).lognormal(3, 0.5, len(replies))
    got = method_metrics({"baseline": lab["baseline"]}, perplexity={"baseline": values}, n_boot=100)
    for role in ("republican", "democrat"):
        row = _est(got, "baseline", "perplexity", role)
        mask = (replies["role"] == role).to_numpy()
        assert row["estimate"] == pytest.approx(np.exp(np.log(values[mask]).mean())) and row["n"] == mask.sum()
        assert row["low"] < row["estimate"] < row["high"]
    none = _est(method_metrics({"baseline": lab["baseline"][:1]}, n_boot=20), "baseline", "perplexity", "democrat")
    assert np.isnan(none["estimate"]) and "transformers backend" in none["reading"]
    with pytest.raises(DebatelabError, match="perplexities for"):
        method_metrics({"baseline": lab["baseline"]}, perplexity={"baseline": values[:-1]})
    with pytest.raises(DebatelabError, match="unknown method"):
        method_metrics({"baseline": lab["baseline"]}, perplexity={"other": values})


def _synthetic(bad: list[int]) -> measures._Method:
    """Two debates of four Republican surveys each, the surveys numbered in ``bad`` invalid."""
    value = [np.nan if i in bad else 3.0 for i in range(8)]
    surveys = pd.DataFrame({"run": 0, "topic": "t", "debate_id": ["a"] * 4 + ["b"] * 4, "role": "republican",
                            "iteration": [0, 3, 6, 9] * 2, "agent_index": 0, "value": value})
    empty = pd.DataFrame(columns=["debate_id", "role", "topic", "run", "text"])
    return measures._Method(surveys, empty, empty, empty, {0: 5.0}, 1)


@pytest.mark.parametrize("bad", [[], [1, 2, 5]])
def test_the_invalid_rate_interval_is_never_narrower_than_wilson(bad):
    row = measures._invalid(_synthetic(bad), "republican", 0, 200)
    wilson = sps.binomtest(len(bad), 8).proportion_ci(method="wilson")
    assert row["estimate"] == len(bad) / 8 and row["n"] == 8
    assert row["low"] <= wilson.low + 1e-12 and row["high"] >= wilson.high - 1e-12 and row["high"] > 0
    assert f"{len(bad)} of 8 Republican surveys" in row["reading"]


def test_delta_vs_subtracts_the_baseline_with_a_conservative_interval(table):
    delta = delta_vs(table, "baseline")
    assert set(delta["method"]) == {"simulated"} and len(delta) == len(table) / 2
    row = delta.set_index(["metric", "role"]).loc[("attractor_pull", "republican")]
    base, sim = (_est(table, m, "attractor_pull", "republican") for m in ("baseline", "simulated"))
    assert row["delta"] == pytest.approx(sim["estimate"] - base["estimate"]) and row["better"] == "lower"
    half = np.hypot((sim["high"] - sim["low"]) / 2, (base["high"] - base["low"]) / 2)
    assert (row["low"], row["high"]) == pytest.approx((row["delta"] - half, row["delta"] + half))
    with pytest.raises(DebatelabError, match="no method named 'nope'"):
        delta_vs(table, "nope")
    with pytest.raises(DebatelabError, match="lacks column"):
        delta_vs(table.drop(columns="low"), "baseline")


@pytest.mark.parametrize("runs, kwargs, needle", [
    ({}, {}, "at least one run directory"),
    ({"baseline": []}, {}, "at least one run directory"),
    ({"baseline": ["RUN"]}, {"n_boot": 0}, "n_boot must be a positive integer"),
    ({"baseline": ["MISSING"]}, {}, "MISSING"),
])
def test_bad_inputs_are_one_line(lab, tmp_path, runs, kwargs, needle):
    paths = {"RUN": lab["baseline"][0], "MISSING": tmp_path / "MISSING"}
    runs = {k: [paths[p] for p in v] for k, v in runs.items()}
    with pytest.raises(DebatelabError) as info:
        method_metrics(runs, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)
