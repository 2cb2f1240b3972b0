"""The instruments beyond self-report, proven against truth on opinion-sim: the attractor fit
recovers pull and influence, stances match surveys, and every metric reaches analyze and report."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml
from scipy import stats as sps

import debatelab
from debatelab.analysis.attractor import _design, default_attitudes, fit_attractor, transitions
from debatelab.analysis.consistency import consistency_rows, pair_stances
from debatelab.analysis.yardsticks import load_human_distributions, representativeness
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.llm import load_llm
from debatelab.stance import score_stances

TOPICS = ["gun_violence", "racism", "climate_change", "illegal_immigration"]


def _sim_run(tmp_path, model, agents, reps=40, rounds=3, name="run", **survey):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": model, "topics": TOPICS, "agents": agents, "rounds": rounds,
                                    "repetitions": reps, "survey": {"measure": "expected", **survey}}))
    run_experiment(load_config(path), tmp_path / name)
    return tmp_path / name


def _pooled(rows):
    return {r["metric"]: r for r in rows if r["topic"] == "all" and r["role"] == "all"}


@pytest.mark.parametrize("pull, influence, noise, agents", [
    (0.2, 0.1, 0.3, ["republican", "democrat"]),
    (0.05, 0.3, 0.2, ["republican", "democrat", "default"]),
    (0.4, 0.0, 0.3, ["republican", "republican", "democrat"]),
])
def test_attractor_fit_recovers_pull_and_influence(tmp_path, pull, influence, noise, agents):
    run = debatelab.load(_sim_run(tmp_path, f"opinion-sim:pull={pull},influence={influence},noise={noise}", agents),
                         measure="expected")
    defaults = default_attitudes(run.surveys) or {t: 6.0 for t in TOPICS}  # no Default agent: the true D
    fit = _pooled(fit_attractor(run.surveys, defaults, n_boot=300))
    for metric, truth in (("attractor_pull", pull), ("attractor_influence", influence)):
        row = fit[metric]
        assert abs(row["estimate"] - truth) <= 0.05, (metric, row["estimate"])
        assert row["ci_low"] <= truth <= row["ci_high"], (metric, row["ci_low"], row["ci_high"])
        assert row["n"] == 40 * 4 * 3 * len(agents)


def test_default_attitude_from_a_reference_run(tmp_path):
    own = debatelab.load(_sim_run(tmp_path, "opinion-sim:default=4", ["republican", "democrat"], reps=4,
                                  name="two"), measure="expected")
    ref = debatelab.load(_sim_run(tmp_path, "opinion-sim:default=4", ["republican", "democrat", "default"], reps=10,
                                  name="three"), measure="expected")
    assert default_attitudes(own.surveys) == {}
    found = default_attitudes(own.surveys, ref.surveys)
    assert set(found) == set(TOPICS) and all(abs(v - 4) < 0.4 for v in found.values())


def _synthetic(n_debates=30, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_debates):
        x = np.array([rng.normal(2, .5), rng.normal(8, .5)])
        for k in range(4):
            rows += [{"debate_id": f"d{d}", "topic": "t", "role": r, "agent_index": i, "iteration": 2 * k,
                      "value": x[i]} for i, r in enumerate(("republican", "democrat"))]
            m = x[::-1].copy()
            x = x + 0.2 * (6 - x) + 0.1 * (m - x) + rng.normal(0, 0.3, 2)
    return pd.DataFrame(rows)


def test_point_estimates_are_statsmodels_and_transitions_pair_others():
    surveys = _synthetic()
    data = transitions(surveys).assign(d=6.0)
    first = data.iloc[0]
    other = surveys[(surveys.debate_id == first.debate_id) & (surveys.iteration == first.iteration)
                    & (surveys.agent_index != first.agent_index)]["value"].mean()
    assert first["m"] == pytest.approx(other) and len(data) == 30 * 2 * 3
    params = sm.OLS(data["dx"], _design(data, data["d"])).fit().params
    rows = {r["metric"]: r for r in fit_attractor(surveys, {"t": 6.0}, n_boot=50) if r["role"] == "all"}
    assert [rows["attractor_drift"]["estimate"], rows["attractor_pull"]["estimate"],
            rows["attractor_influence"]["estimate"]] == pytest.approx(list(params))
    assert np.linalg.lstsq(_design(data, data["d"]), data["dx"], rcond=None)[0] == pytest.approx(list(params))


def test_degenerate_fits_are_nan_with_a_reason():
    surveys = _synthetic(n_debates=1)
    one = fit_attractor(surveys[surveys["iteration"] <= 2], {"t": 6.0}, n_boot=10)
    assert all(math.isnan(r["estimate"]) and "only" in r["reading"] for r in one)
    surveys = surveys.assign(value=np.nan)
    assert fit_attractor(surveys, {"t": 6.0}) == []


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    path = _sim_run(tmp_path_factory.mktemp("judged"), "opinion-sim", ["republican", "democrat", "default"], reps=10)
    score_stances(path, "opinion-sim", load_llm("opinion-sim"))
    return path


def test_stances_match_surveys_on_the_simulator(judged):
    run = debatelab.load(judged, measure="expected")
    rows = consistency_rows(run.stances, run.surveys, n_boot=200)
    correlations = [r for r in rows if r["metric"] == "stance_survey_correlation" and r["role"] == "all"]
    gaps = [r for r in rows if r["metric"] == "stance_survey_gap" and r["role"] == "all"]
    assert len(correlations) == 4 and all(r["estimate"] > 0.99 for r in correlations)
    assert all(abs(r["estimate"]) < 0.05 for r in gaps)  # statements round to 0.1
    pairs = pair_stances(run.stances, run.surveys)
    assert len(pairs) == len(run.stances)
    first = pairs[pairs["iteration"] <= 3]  # the first cycle's replies pair with the pre-debate survey
    assert (first["survey"] - first["stance"]).abs().max() < 0.06


def test_pairing_rule_and_scipy():
    surveys = pd.DataFrame({"debate_id": "d", "topic": "t", "role": "republican", "agent_index": [0, 1, 0, 1],
                            "iteration": [0, 0, 2, 2], "value": [1.0, 5.0, 3.0, 7.0]})
    stances = pd.DataFrame({"debate_id": "d", "topic": "t", "role": "republican", "agent_index": [0, 1, 0, 1],
                            "iteration": [1, 2, 3, 4], "value": [1.5, 5.5, 2.5, 6.0]})
    pairs = pair_stances(stances, surveys)
    assert pairs["survey"].tolist() == [1.0, 5.0, 3.0, 7.0]
    r = [x for x in consistency_rows(stances, surveys, n_boot=10) if x["metric"] == "stance_survey_correlation"][0]
    assert r["estimate"] == pytest.approx(sps.pearsonr(pairs["stance"], pairs["survey"]).statistic)


def test_representativeness_against_scipy_and_hand_cases():
    assert representativeness([0.25] * 4, [0.25] * 4) == pytest.approx(1.0)
    assert representativeness([1, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(0.0)
    p, q = np.array([.1, .2, .3, .4]), np.array([.4, .3, .2, .1])
    assert representativeness(p, q) == pytest.approx(1 - sps.wasserstein_distance(range(4), range(4), p, q) / 3)
    assert representativeness(list(range(11)), list(range(11))[::-1]) < 1
    with pytest.raises(ValueError):
        representativeness([1, 0], [1, 0, 0])


@pytest.mark.parametrize("body, message", [
    ("topic,group,scale,option\nracism,democrat,pew4,3\n", "lacks column 'share'"),
    ("topic,group,scale,option,share\nracism,democrat,pew5,3,10\n", "unknown scale"),
    ("topic,group,scale,option,share\nracism,democrat,pew4,4,10\n", "is not a score 0..3"),
    ("topic,group,scale,option,share\nracism,democrat,pew4,3,-1\n", "non-negative"),
    ("topic,group,scale,option,share\nracism,democrat,pew4,3,1\nracism,democrat,pew4,3,2\n", "repeats"),
    ("topic,group,scale,option,share\nracism,democrat,pew4,3,\n", "needs a value"),
])
def test_human_distribution_file_errors(tmp_path, body, message):
    path = tmp_path / "h.csv"
    path.write_text(body)
    with pytest.raises(DebatelabError, match=message):
        load_human_distributions(path)


def test_human_distribution_file(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("topic,group,scale,option,share\nracism,democrat,pew4,A very big problem,55\n"
                    "racism,democrat,pew4,small,15\nracism,democrat,pew4,2,30\n")
    table = load_human_distributions(path)
    assert table.iloc[0]["probs"] == pytest.approx([0, .15, .30, .55])


def test_analyze_and_report_carry_every_instrument(judged, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["analyze", str(judged), "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    metrics = {r["metric"] for r in records}
    assert {"attractor_pull", "attractor_influence", "stance_survey_correlation", "stance_survey_gap",
            "change_first_to_last", "convergence_to_default"} <= metrics
    assert all(set(r) >= {"metric", "topic", "role", "estimate", "low", "high", "n"} for r in records)
    assert main(["report", str(judged), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "attractor_influence" in html and "Said vs reported" in html and "stance_survey_gap" in html


def test_pew4_run_reports_pew_yardsticks(tmp_path):
    path = _sim_run(tmp_path, "opinion-sim", ["republican", "democrat", "default"], reps=5, scale="pew4")
    out = tmp_path / "m.json"
    assert main(["analyze", str(path), "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    pew = [r for r in records if r["metric"] == "p_very_big_before" and r["topic"] == "gun_violence"]
    assert {r["role"]: r["reference"] for r in pew} == {"republican": 0.38, "democrat": 0.81, "default": 0.6}
    assert any(r["metric"] == "representativeness" for r in records)


def test_analyze_refuses_an_empty_or_other_scale_reference(tmp_path, capsys):
    base = dict(model="opinion-sim", topics=["racism"], rounds=1, repetitions=2)
    for name, extra in (("run", {}), ("pew", {"survey": {"scale": "pew4"}})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "agents": ["republican", "democrat", "default"], **extra}))
        run_experiment(load_config(path), tmp_path / name)
    from debatelab.store import open_store

    (tmp_path / "empty").mkdir()
    open_store(tmp_path / "empty").close()  # a run database with no debate yet
    for reference, message in (("pew", "surveys on the pew4 scale"), ("empty", "has no complete debate"),
                               ("run", None)):
        code = main(["analyze", str(tmp_path / "run"), "--reference", str(tmp_path / reference),
                     "--json", str(tmp_path / "a.json")])
        err = capsys.readouterr().err
        assert (code, err.count("\n")) == ((2, 1) if message else (0, 0)) and (message or "") in err
