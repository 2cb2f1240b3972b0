"""Survey-behaviour consistency on frames built here: the pairing rule, r and the gap against
scipy and numpy, and undefined cases as NaN rows with a reason."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from debatelab.analysis.consistency import consistency_rows, pair_stances, stance_trajectory
from debatelab.analysis.metrics import COLUMNS
from debatelab.errors import DebatelabError

ROSTER = ("republican", "democrat", "default")


def frames(debates=30, rounds=3, roster=ROSTER, topics=("gun", "race"), seed=0):
    """Surveys at 0, n, ..., rounds·n and one reply per agent per cycle (agent i speaks at
    k·n + i + 1), each stance equal to the speaker's last survey before it."""
    rng = np.random.default_rng(seed)
    n, surveys, stances = len(roster), [], []
    centre = {"republican": 2.0, "democrat": 8.0, "default": 6.0}
    for topic in topics:
        for rep in range(debates):
            debate = f"{topic}-{rep}"
            x = np.array([rng.normal(centre[r], 1.0) for r in roster])
            for cycle in range(rounds + 1):
                surveys += [{"debate_id": debate, "topic": topic, "role": r, "agent_index": i, "iteration": cycle * n,
                             "value": float(x[i])} for i, r in enumerate(roster)]
                if cycle < rounds:
                    stances += [{"debate_id": debate, "topic": topic, "role": r, "agent_index": i, "judge": "j",
                                 "iteration": cycle * n + i + 1, "value": float(x[i])} for i, r in enumerate(roster)]
                x = x + rng.normal(0, 0.5, n)
    return pd.DataFrame(stances), pd.DataFrame(surveys)


def rows_by(rows):
    return {(r["metric"], r["topic"], r["role"]): r for r in rows}


def test_stances_equal_to_surveys_give_r_one_and_no_gap():
    stances, surveys = frames()
    rows = consistency_rows(stances, surveys, n_boot=100)
    assert all(list(r) == COLUMNS for r in rows) and len(rows) == 2 * 2 * 4  # 2 metrics × 2 topics × (3 roles + all)
    for (metric, _, role), row in rows_by(rows).items():
        if metric == "stance_survey_correlation":
            assert row["estimate"] == pytest.approx(1.0) and row["ci_low"] == pytest.approx(1.0)
            assert row["n"] == 30 * 3 * (3 if role == "all" else 1)
            assert "said matched what they reported: r = 1.00" in row["reading"]
        else:
            assert row["estimate"] == pytest.approx(0.0, abs=1e-12) and row["n"] == 30
            assert "said the same as their surveys" in row["reading"]


def test_stances_one_point_above_give_a_gap_of_one_and_r_one():
    stances, surveys = frames()
    rows = rows_by(consistency_rows(stances.assign(value=stances["value"] + 1), surveys, n_boot=50))
    gap, r = rows[("stance_survey_gap", "gun", "republican")], rows[("stance_survey_correlation", "gun", "republican")]
    assert gap["estimate"] == pytest.approx(1.0) and gap["ci_low"] == pytest.approx(1.0, abs=1e-9)
    assert "said 1.00 points more than" in gap["reading"] and r["estimate"] == pytest.approx(1.0)
    below = rows_by(consistency_rows(stances.assign(value=stances["value"] - 0.5), surveys, n_boot=10))
    assert "0.50 points less than" in below[("stance_survey_gap", "race", "all")]["reading"]


def test_independent_stances_correlate_near_zero_within_their_interval():
    stances, surveys = frames(debates=40)
    noise = stances.assign(value=np.random.default_rng(1).normal(5, 2, len(stances)))
    row = rows_by(consistency_rows(noise, surveys, n_boot=300))[("stance_survey_correlation", "gun", "democrat")]
    assert abs(row["estimate"]) < 0.3 and row["ci_low"] < 0 < row["ci_high"]
    assert row["ci_low"] < row["estimate"] < row["ci_high"] and "did not match" in row["reading"]


def test_r_and_p_are_scipy_and_the_gap_is_a_t_interval_over_debate_means():
    stances, surveys = frames(debates=12)
    rng = np.random.default_rng(2)
    noisy = stances.assign(value=stances["value"] + rng.normal(0.3, 1.0, len(stances)))
    rows = rows_by(consistency_rows(noisy, surveys, n_boot=50))
    pairs = pair_stances(noisy, surveys)
    mine = pairs[(pairs["topic"] == "race") & (pairs["role"] == "democrat")]
    expected = sps.pearsonr(mine["stance"], mine["survey"])
    r = rows[("stance_survey_correlation", "race", "democrat")]
    assert r["estimate"] == pytest.approx(expected.statistic) and r["p_value"] == pytest.approx(expected.pvalue)
    per_debate = (mine["stance"] - mine["survey"]).groupby(mine["debate_id"]).mean().to_numpy()
    low, high = sps.t.interval(0.95, len(per_debate) - 1, loc=per_debate.mean(), scale=sps.sem(per_debate))
    gap = rows[("stance_survey_gap", "race", "democrat")]
    assert gap["estimate"] == pytest.approx(np.mean(per_debate)) and gap["n"] == 12
    assert (gap["ci_low"], gap["ci_high"]) == pytest.approx((low, high))
    assert gap["p_value"] == pytest.approx(sps.ttest_1samp(per_debate, 0.0).pvalue)


def test_the_pairing_rule_takes_the_last_survey_before_each_reply():
    n = 3  # surveys at 0, 3, 6 with a distinct value each; agent 0 speaks at 1, 4 and 7, also at 3 and 6 here
    surveys = pd.DataFrame({"debate_id": "d", "topic": "t", "role": "republican", "agent_index": [0, 1, 2] * 3,
                            "iteration": np.repeat([0, n, 2 * n], 3), "value": np.arange(9.0)})
    stances = pd.DataFrame({"debate_id": "d", "topic": "t", "role": "republican", "agent_index": 0,
                            "iteration": [1, 3, 4, 6, 7], "value": 1.0})
    pairs = pair_stances(stances, surveys)
    assert list(pairs.columns) == ["debate_id", "topic", "role", "agent_index", "iteration", "stance", "survey"]
    assert dict(zip(pairs["iteration"], pairs["survey"], strict=True)) == {1: 0.0, 3: 0.0, 4: 3.0, 6: 3.0, 7: 6.0}


def test_n_is_the_number_of_agents_of_each_debate():
    surveys = pd.DataFrame({"debate_id": ["two"] * 4 + ["three"] * 6, "topic": "t", "role": "democrat",
                            "agent_index": [0, 1] * 2 + [0, 1, 2] * 2, "iteration": [0, 0, 2, 2, 0, 0, 0, 3, 3, 3],
                            "value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]})
    stances = pd.DataFrame({"debate_id": ["two", "three"], "topic": "t", "role": "democrat", "agent_index": [0, 0],
                            "iteration": [3, 3], "value": 0.0})
    assert pair_stances(stances, surveys)["survey"].tolist() == [3.0, 5.0]  # 2·floor(2/2) = 2, 3·floor(2/3) = 0


def test_invalid_stances_and_surveys_are_left_out():
    stances, surveys = frames(debates=5)
    stances.loc[0, "value"] = np.nan
    surveys.loc[(surveys["debate_id"] == "gun-1") & (surveys["iteration"] == 0), "value"] = np.nan
    pairs = pair_stances(stances, surveys)
    assert len(pairs) == len(stances) - 1 - 3 and pairs[["stance", "survey"]].notna().all().all()
    rows = consistency_rows(stances, surveys, n_boot=20)
    assert all(r["estimate"] == pytest.approx(1.0) for r in rows if r["metric"] == "stance_survey_correlation")


def test_constant_or_too_few_pairs_are_nan_rows_without_warnings():
    stances, surveys = frames(debates=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = rows_by(consistency_rows(stances.assign(value=5.0), surveys, n_boot=20))
        row = flat[("stance_survey_correlation", "gun", "all")]
        assert math.isnan(row["estimate"]) and math.isnan(row["ci_low"]) and "do not vary" in row["reading"]
        assert flat[("stance_survey_gap", "gun", "all")]["n"] == 4  # the gap is still defined
        two = consistency_rows(stances.iloc[:2], surveys, n_boot=20)
        assert all(math.isnan(r["estimate"]) for r in two if r["metric"] == "stance_survey_correlation")
        assert consistency_rows(stances.iloc[:0], surveys) == []


def test_other_scales_get_r_only_and_say_so():
    stances, surveys = frames(debates=6)
    rows = consistency_rows(stances, surveys.assign(value=surveys["value"] / 10 * 3), n_boot=20, gap_comparable=False)
    assert {r["metric"] for r in rows} == {"stance_survey_correlation"}
    assert all("another scale" in r["reading"] and "rough" in r["reading"] for r in rows)


def test_stances_of_several_judges_are_refused():
    stances, surveys = frames(debates=2)
    both = pd.concat([stances, stances.assign(judge="k")])
    with pytest.raises(DebatelabError, match="2 judges"):
        consistency_rows(both, surveys)
    with pytest.raises(DebatelabError, match="stances lack column"):
        pair_stances(stances.drop(columns="agent_index"), surveys)


def test_stance_trajectory_matches_numpy():
    stances, _ = frames(debates=8, topics=("gun",))
    stances.loc[3, "value"] = np.nan
    table = stance_trajectory(stances)
    row = table[(table["role"] == "democrat") & (table["iteration"] == 2)].iloc[0]
    values = stances[(stances["role"] == "democrat") & (stances["iteration"] == 2)]["value"].dropna().to_numpy()
    assert row["n"] == len(values) and row["mean"] == pytest.approx(values.mean())
    assert row["sd"] == pytest.approx(values.std(ddof=1)) and row["se"] == pytest.approx(sps.sem(values))
    assert set(table["iteration"][table["role"] == "republican"]) == {1, 4, 7}  # a role's own seats only
    assert (stance_trajectory(stances, unit="debate")["n"] <= 8).all()
