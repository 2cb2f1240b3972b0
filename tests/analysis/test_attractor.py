"""The attractor fit against truth: surveys simulated here by the rule the fit assumes,
x ← x + A·(D − x) + B·(m − x) + N(0, S²) after each cycle, must give back A and B; point estimates
are statsmodels', intervals resample whole debates, and degenerate inputs give NaN rows."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from debatelab.analysis.attractor import (
    TRANSITION_COLUMNS, Anchors, _bootstrap, _design, cluster_resamples, default_attitudes, fit_attractor, transitions)
from debatelab.analysis.metrics import COLUMNS
from debatelab.errors import DebatelabError

DEFAULTS = {"gun": 6.0, "race": 4.0, "climate": 7.0, "border": 5.0}
START = {"republican": 2.0, "democrat": 8.0}
R_D_DEFAULT, R_D, R_R = ("republican", "democrat", "default"), ("republican", "democrat"), ("republican", "republican")


def simulate(pull, influence, roster, debates=40, rounds=3, noise=0.3, survey_noise=0.0, seed=1):
    """Surveys at iterations 0, n, ..., rounds·n of the latent attitudes, n = len(roster)."""
    rng = np.random.default_rng(seed)
    n, rows = len(roster), []
    for topic, d in DEFAULTS.items():
        for rep in range(debates):
            x = np.array([rng.normal(START.get(role, d), 0.5) for role in roster])
            for cycle in range(rounds + 1):
                seen = x + rng.normal(0, survey_noise, n) if survey_noise else x
                rows += [{"debate_id": f"{topic}-{rep}", "topic": topic, "role": role, "agent_index": i,
                          "iteration": cycle * n, "value": float(seen[i])} for i, role in enumerate(roster)]
                others = (x.sum() - x) / (n - 1)
                x = x + pull * (d - x) + influence * (others - x) + rng.normal(0, noise, n)
    return pd.DataFrame(rows)


def by_key(rows):
    return {(r["metric"], r["topic"], r["role"]): r for r in rows}


@pytest.mark.parametrize("roster", [R_D_DEFAULT, R_D, R_R], ids=["R-D-default", "R-D", "R-R"])
@pytest.mark.parametrize("pull, influence", [(0.2, 0.1), (0.05, 0.3), (0.4, 0.0)])
def test_the_pooled_fit_recovers_pull_and_influence(pull, influence, roster):
    """At 40 debates × 4 topics. A 95 % interval misses the truth one time in twenty, so the seed
    is fixed; the intervals' coverage was checked apart, over hundreds of seeds (0.93 to 0.97)."""
    surveys = simulate(pull, influence, roster)
    # D estimated from the Default agents where there are some (and redrawn in the bootstrap), else the true D
    rows = by_key(fit_attractor(surveys, None if "default" in roster else DEFAULTS, n_boot=200))
    for metric, truth in (("attractor_pull", pull), ("attractor_influence", influence)):
        row = rows[(metric, "all", "all")]
        assert abs(row["estimate"] - truth) <= 0.05, (metric, row["estimate"])
        assert row["ci_low"] <= truth <= row["ci_high"], (metric, row["ci_low"], row["ci_high"])
        assert row["n"] == 40 * 4 * 3 * len(roster) and "in 160 debates" in row["reading"]


def test_per_topic_and_role_rows_are_complete_and_sensibly_wide():
    rows = fit_attractor(simulate(0.2, 0.1, R_D_DEFAULT), DEFAULTS, n_boot=200)
    assert all(list(r) == COLUMNS for r in rows)
    keys = by_key(rows)
    assert len(keys) == len(rows) == 3 * (4 * 4 + 1)  # 3 metrics × (4 topics × (3 roles + all) + pooled)
    pooled = keys[("attractor_pull", "all", "all")]
    for (metric, topic, role), row in keys.items():
        if metric == "attractor_drift" or topic == "all":
            continue
        width = row["ci_high"] - row["ci_low"]
        assert 0 < width < 0.6 and row["ci_low"] <= row["estimate"] <= row["ci_high"], (metric, topic, role)
        assert width > pooled["ci_high"] - pooled["ci_low"]
        assert row["n"] == 40 * 3 * (3 if role == "all" else 1)
    assert keys[("attractor_pull", "gun", "republican")]["reading"].startswith(
        "Republican agents moved 0.") and "default attitude (6.00)" in keys[("attractor_pull", "gun", "republican")][
        "reading"]
    assert "toward the other agents' mean" in keys[("attractor_influence", "gun", "all")]["reading"]
    assert "hard to tell apart" not in pooled["reading"] and "(each topic's own)" in pooled["reading"]
    assert "pooled over topics" in pooled["reading"] and "in 160 debates" in pooled["reading"]


def test_readings_say_when_pull_and_influence_blur_or_the_interval_includes_zero():
    surveys = simulate(0.4, 0.0, R_D, debates=6)
    mine = transitions(surveys).query("topic == 'gun' and role == 'republican'")
    assert np.corrcoef(6.0 - mine["x"], mine["m"] - mine["x"])[0, 1] ** 2 > 0.9  # the premise
    rows = by_key(fit_attractor(surveys, DEFAULTS, n_boot=200))
    influence = rows[("attractor_influence", "gun", "republican")]
    assert influence["ci_low"] < 0 < influence["ci_high"] and "no clear social influence" in influence["reading"]
    assert "hard to tell apart" in influence["reading"] and "only 6 debates" in influence["reading"]
    assert "hard to tell apart" not in rows[("attractor_drift", "gun", "republican")]["reading"]


def test_point_estimates_and_p_values_are_statsmodels_and_the_bootstrap_solver_agrees():
    surveys = simulate(0.2, 0.1, R_D, debates=15)
    data = transitions(surveys)
    data = data[data["topic"] == "gun"]
    regressors = sm.add_constant(np.column_stack([6.0 - data["x"], data["m"] - data["x"]]))
    groups = pd.factorize(data["debate_id"])[0]
    fit = sm.OLS(data["dx"].to_numpy(), regressors).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    rows = by_key(fit_attractor(surveys, DEFAULTS, n_boot=20))
    for metric, k in (("attractor_drift", 0), ("attractor_pull", 1), ("attractor_influence", 2)):
        assert rows[(metric, "gun", "all")]["estimate"] == pytest.approx(fit.params[k], abs=1e-10)
        assert rows[(metric, "gun", "all")]["p_value"] == pytest.approx(fit.pvalues[k], rel=1e-8)
    solved = np.linalg.lstsq(_design(data, 6.0), data["dx"].to_numpy(), rcond=None)[0]
    assert solved == pytest.approx(fit.params, abs=1e-10)


def test_resamples_draw_whole_debates():
    debates = np.array(["a", "a", "b", "c", "c", "c", "b", "d"])
    rng = np.random.default_rng(3)
    for idx in cluster_resamples(debates, rng, 50):
        counts = np.bincount(idx, minlength=len(debates))
        drawn = 0
        for d in np.unique(debates):
            mine = counts[debates == d]
            assert np.all(mine == mine[0])  # a debate's rows come together, or not at all
            drawn += mine[0]
        assert drawn == 4  # as many debates as there are


def test_duplicated_transitions_do_not_narrow_the_clustered_interval():
    """A transition bootstrap would shrink the interval by √2 when every row is doubled; a debate
    bootstrap draws the same debates and solves the same weighted problem."""
    data = transitions(simulate(0.2, 0.1, R_D, debates=20)).assign(d=6.0)
    anchors = Anchors({"gun": 6.0, "race": 4.0, "climate": 7.0, "border": 5.0})
    once = _bootstrap(data, anchors, seed=1, n_boot=200, confidence=0.95)
    twice = _bootstrap(pd.concat([data, data]), anchors, seed=1, n_boot=200, confidence=0.95)
    assert once[0] == pytest.approx(twice[0]) and once[1] == pytest.approx(twice[1]) and twice[2] == 200


def test_an_estimated_default_attitude_widens_the_interval_by_its_own_error():
    surveys = simulate(0.4, 0.0, R_D_DEFAULT, debates=20)
    estimated = by_key(fit_attractor(surveys, n_boot=200))
    held = by_key(fit_attractor(surveys, default_attitudes(surveys), n_boot=200))
    for key in (("attractor_pull", "all", "all"), ("attractor_drift", "gun", "republican")):
        assert estimated[key]["estimate"] == pytest.approx(held[key]["estimate"])  # same D, same point estimate
        width = estimated[key]["ci_high"] - estimated[key]["ci_low"]
        assert width > 1.2 * (held[key]["ci_high"] - held[key]["ci_low"]), key
    # within a topic D moves the intercept only: pull and influence intervals do not change
    assert estimated[("attractor_pull", "gun", "republican")]["ci_low"] == pytest.approx(
        held[("attractor_pull", "gun", "republican")]["ci_low"])


def test_a_reference_run_gives_the_default_attitude_and_is_resampled_on_its_own():
    reference = simulate(0.4, 0.1, R_D_DEFAULT, debates=5, seed=5)
    reference["debate_id"] = "ref-" + reference["debate_id"]
    surveys = simulate(0.4, 0.1, R_D, debates=30)
    borrowed = by_key(fit_attractor(surveys, reference_surveys=reference, n_boot=200))
    held = by_key(fit_attractor(surveys, default_attitudes(surveys, reference), n_boot=200))
    key = ("attractor_drift", "gun", "all")
    assert borrowed[key]["estimate"] == pytest.approx(held[key]["estimate"])
    assert borrowed[key]["ci_high"] - borrowed[key]["ci_low"] > 1.2 * (held[key]["ci_high"] - held[key]["ci_low"])
    with pytest.raises(DebatelabError, match="not both"):
        fit_attractor(surveys, DEFAULTS, reference_surveys=reference)


def test_transitions_pair_consecutive_surveys_with_the_other_valid_agents():
    surveys = pd.DataFrame({
        "debate_id": ["d"] * 9 + ["e"] * 4, "topic": "t",
        "role": ["republican", "democrat", "default"] * 3 + ["republican", "democrat"] * 2,
        "agent_index": [0, 1, 2] * 3 + [0, 1] * 2, "iteration": [0] * 3 + [3] * 3 + [6] * 3 + [0, 0, 2, 2],
        "value": [1.0, 9.0, np.nan, 2.0, 8.0, 5.0, 3.0, np.nan, 5.5, 2.0, 8.0, 2.5, 7.0]})
    data = transitions(surveys)
    assert list(data.columns) == TRANSITION_COLUMNS
    got = {(r.debate_id, r.agent_index, r.iteration): (r.x, r.x_next, r.dx, r.m) for r in data.itertuples()}
    assert got == {("d", 0, 0): (1.0, 2.0, 1.0, 9.0),  # the invalid default agent is not in m
                   ("d", 1, 0): (9.0, 8.0, -1.0, 1.0),
                   ("d", 0, 3): (2.0, 3.0, 1.0, 6.5),
                   ("d", 2, 3): (5.0, 5.5, 0.5, 5.0),  # agent 1's next survey is invalid: no transition
                   ("e", 0, 0): (2.0, 2.5, 0.5, 8.0), ("e", 1, 0): (8.0, 7.0, -1.0, 2.0)}  # n = 2 here


def test_a_transition_needs_another_valid_agent():
    surveys = pd.DataFrame({"debate_id": "d", "topic": "t", "role": ["republican", "democrat"] * 2,
                            "agent_index": [0, 1, 0, 1], "iteration": [0, 0, 2, 2], "value": [1.0, np.nan, 2.0, 8.0]})
    assert transitions(surveys).empty


def test_duplicate_surveys_and_missing_columns_are_refused():
    surveys = simulate(0.2, 0.1, R_D, debates=2)
    with pytest.raises(DebatelabError, match="more than one"):
        transitions(pd.concat([surveys, surveys.iloc[:1]]))
    with pytest.raises(DebatelabError, match="value"):
        transitions(surveys.drop(columns="value"))


def test_degenerate_fits_are_nan_rows_with_a_reason_and_no_warning():
    surveys = simulate(0.2, 0.1, R_D, debates=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        few = fit_attractor(surveys[(surveys["topic"] == "gun") & (surveys["iteration"] <= 2)], DEFAULTS, n_boot=10)
        assert len(few) == 9 and all(math.isnan(r["estimate"]) and f"only {r['n']} transition" in r["reading"]
                                     for r in few)
        assert {r["n"] for r in few} == {1, 2}
        twins = simulate(0.2, 0.0, R_R, debates=5, noise=0.0)
        twins["value"] = twins.groupby(["debate_id", "iteration"])["value"].transform("mean")  # m − x ≡ 0
        singular = fit_attractor(twins, DEFAULTS, n_boot=10)
        assert singular and all(math.isnan(r["estimate"]) and "singular" in r["reading"] for r in singular)
        assert all(math.isnan(r["ci_low"]) and math.isnan(r["p_value"]) for r in singular)
        assert all(r["n"] == (120 if r["topic"] == "all" else 30) for r in singular)
        assert fit_attractor(surveys.assign(value=np.nan), DEFAULTS) == []  # nothing to fit: no rows


def test_a_single_debate_gets_estimates_without_an_interval():
    rows = by_key(fit_attractor(simulate(0.2, 0.1, R_D, debates=1, rounds=6), {"gun": 6.0}, n_boot=10))
    row = rows[("attractor_pull", "gun", "all")]
    assert math.isfinite(row["estimate"]) and math.isnan(row["ci_low"]) and "single debate" in row["reading"]


def test_a_topic_without_default_attitude_still_gets_pull_and_influence():
    """Within a topic D is a constant: it moves the intercept only, so a and b do not need it."""
    surveys = simulate(0.3, 0.1, R_D, debates=30)
    known = by_key(fit_attractor(surveys, DEFAULTS, n_boot=50))
    unknown = by_key(fit_attractor(surveys, {t: v for t, v in DEFAULTS.items() if t != "gun"}, n_boot=50))
    for metric in ("attractor_pull", "attractor_influence"):
        assert unknown[(metric, "gun", "democrat")]["estimate"] == pytest.approx(
            known[(metric, "gun", "democrat")]["estimate"])
        assert unknown[(metric, "gun", "democrat")]["ci_low"] == pytest.approx(
            known[(metric, "gun", "democrat")]["ci_low"])
    drift = unknown[("attractor_drift", "gun", "all")]
    assert math.isnan(drift["estimate"]) and "unknown" in drift["reading"]
    assert "fixed attitude near" in unknown[("attractor_pull", "gun", "all")]["reading"]
    assert unknown[("attractor_pull", "all", "all")]["n"] == 30 * 3 * 3 * 2  # pooled over the topics with D


def test_errors_in_the_measure_are_tolerated_at_small_noise():
    rows = by_key(fit_attractor(simulate(0.2, 0.1, R_D, survey_noise=0.05, seed=4), DEFAULTS, n_boot=100))
    assert rows[("attractor_pull", "all", "all")]["estimate"] == pytest.approx(0.2, abs=0.05)


def test_default_attitudes_own_run_reference_and_absent():
    own = pd.DataFrame({"debate_id": ["a", "a", "b", "b", "c"], "topic": ["gun", "gun", "gun", "gun", "race"],
                        "role": ["default", "default", "default", "republican", "republican"],
                        "iteration": [0, 0, 0, 0, 0], "value": [5.0, 7.0, 3.0, 1.0, 2.0]})
    assert default_attitudes(own) == {"gun": pytest.approx(4.5)}  # debate a's two seats average first: (6 + 3) / 2
    reference = pd.DataFrame({"debate_id": ["r1", "r2", "r3", "r4"], "topic": ["race", "race", "gun", "race"],
                              "role": "default", "iteration": [0, 0, 0, 3], "value": [4.0, np.nan, 9.0, 1.0]})
    assert default_attitudes(own, reference) == {"gun": pytest.approx(4.5), "race": pytest.approx(4.0)}
    assert default_attitudes(own[own["topic"] == "race"]) == {}
