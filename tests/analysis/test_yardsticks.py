"""Human yardsticks: the representativeness score against scipy and hand cases, the human
distribution CSV (good file and every bad one), and the Pew rows on synthetic pew4 surveys,
checked against numpy/scipy by hand."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from debatelab.analysis.metrics import COLUMNS
from debatelab.analysis.yardsticks import (load_human_distributions, pew_distributions, representativeness,
                                           representativeness_rows, very_big_rows)
from debatelab.errors import DebatelabError
from debatelab.scales import PEW4, ZERO_TEN

# -- representativeness -------------------------------------------------------------------------


def test_identical_and_opposite_ends():
    for k in (4, 11):
        uniform = [1 / k] * k
        assert representativeness(uniform, uniform) == pytest.approx(1.0)
        assert representativeness([1] + [0] * (k - 1), [0] * (k - 1) + [1]) == pytest.approx(0.0)


def test_hand_cases_k4_and_k11():
    # one step of mass 0.5 on a 4-point scale: W1 = 0.5, so 1 - 0.5/3
    assert representativeness([0.5, 0.5, 0, 0], [0, 1, 0, 0]) == pytest.approx(1 - 0.5 / 3)
    # all mass at 0 against all at 5 on 0..10: W1 = 5, so 1 - 5/10
    assert representativeness([1] + [0] * 10, [0] * 5 + [1] + [0] * 5) == pytest.approx(0.5)
    # unnormalised weights (percent) are normalised first
    assert representativeness([60, 23, 13, 4], [0.60, 0.23, 0.13, 0.04]) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [4, 11])
def test_against_scipy(k):
    rng = np.random.default_rng(k)
    for _ in range(5):
        p, q = rng.random(k), rng.random(k)
        expected = 1 - sps.wasserstein_distance(range(k), range(k), p / p.sum(), q / q.sum()) / (k - 1)
        assert representativeness(p, q) == pytest.approx(expected)
        # and against the closed form for 1-D ordinal distributions: the L1 distance of the CDFs
        cdf = np.abs(np.cumsum(p / p.sum()) - np.cumsum(q / q.sum()))[:-1].sum()
        assert representativeness(p, q) == pytest.approx(1 - cdf / (k - 1))


@pytest.mark.parametrize("p, q", [([1, 0], [1, 0, 0]), ([1, -1, 1], [1, 1, 1]), ([0, 0], [1, 0]),
                                  ([1], [1]), ([np.nan, 1], [1, 1])])
def test_bad_distributions(p, q):
    with pytest.raises(ValueError):
        representativeness(p, q)


# -- human distributions CSV --------------------------------------------------------------------

HEADER = "topic,group,scale,option,share\n"


def test_good_file(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("\ufeffTopic, Group ,scale,option,share,note\n"
                    "racism,Democrat,pew4,A very big problem,55,x\n"
                    "racism,democrat,pew4,small,15,\n"
                    "\n"
                    "racism,democrat,pew4,2,30,\n"
                    "gun_violence,All adults,0-10,10,0.5,\n"
                    "gun_violence,All adults,0-10,0,0.5,\n")
    table = load_human_distributions(path).set_index(["topic", "group", "scale"])
    assert table.loc[("racism", "democrat", "pew4"), "probs"] == pytest.approx([0, .15, .30, .55])
    assert table.loc[("gun_violence", "all_adults", "0-10"), "probs"] == pytest.approx([.5] + [0] * 9 + [.5])
    assert "h.csv" in table.loc[("racism", "democrat", "pew4"), "source"]


@pytest.mark.parametrize("body, message", [
    ("topic,group,scale,option\nracism,democrat,pew4,3\n", "lacks column 'share'"),
    (HEADER + "racism,democrat,pew5,3,10\n", "line 2, column 'scale': unknown scale 'pew5'"),
    (HEADER + "racism,democrat,pew4,4,10\n", "line 2, column 'option': '4' is not a score 0..3"),
    (HEADER + "racism,democrat,pew4,huge,10\n", "column 'option': 'huge' is not a score"),
    (HEADER + "racism,democrat,0-10,2.5,10\n", "column 'option': '2.5' is not a score 0..10"),
    (HEADER + "racism,democrat,pew4,3,-1\n", "line 2, column 'share': a share must be a non-negative"),
    (HEADER + "racism,democrat,pew4,3,lots\n", "column 'share': 'lots' is not a number"),
    (HEADER + "racism,democrat,pew4,3,1\nracism,democrat,pew4,A very big problem,2\n",
     "line 3, column 'option': option 3 of racism/democrat/pew4 repeats \\(first on line 2\\)"),
    (HEADER + "racism,democrat,pew4,3,\n", "line 2, column 'share': every column needs a value"),
    (HEADER + ",democrat,pew4,3,1\n", "column 'topic': every column needs a value"),
    (HEADER + "racism,democrat,pew4,3,0\n", "sum to 0"),
    (HEADER, "holds no distribution"),
    ("", "is not a CSV table"),
    (HEADER + "racism,democrat,pew4,3,1,extra\n", "is not a CSV table"),
])
def test_bad_files_are_one_line(tmp_path, body, message):
    path = tmp_path / "h.csv"
    path.write_text(body)
    with pytest.raises(DebatelabError, match=message) as info:
        load_human_distributions(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_and_oversized_files(tmp_path, monkeypatch):
    with pytest.raises(DebatelabError, match="not found"):
        load_human_distributions(tmp_path / "absent.csv")
    from debatelab import readers

    path = tmp_path / "h.csv"
    path.write_text(HEADER + "racism,democrat,pew4,3,1\n")
    monkeypatch.setattr(readers.read_text, "__defaults__", (10,))  # a 10-byte limit instead of 256 MiB
    with pytest.raises(DebatelabError, match="larger than"):
        load_human_distributions(path)


def test_pew_distributions_come_from_the_package_data():
    table = pew_distributions()
    row = table[(table["topic"] == "gun_violence") & (table["group"] == "all_adults")].iloc[0]
    assert row["scale"] == "pew4" and row["probs"] == pytest.approx([.04, .13, .23, .60])
    assert "Pew all adults, June 2023" == row["source"]


# -- rows on synthetic surveys ------------------------------------------------------------------


def _surveys(seed=0, debates=12, topic="gun_violence"):
    """A pew4 run: per debate two Republicans and one Default agent, surveyed at 0 and 6."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(debates):
        for i, role in enumerate(("republican", "republican", "default")):
            for iteration in (0, 6):
                probs = rng.dirichlet([1, 1, 2, 3] if role == "default" else [3, 2, 1, 1]).tolist()
                score = int(rng.integers(0, 4))
                valid = bool(rng.random() > 0.1)
                rows.append({"debate_id": f"d{d}", "topic": topic, "role": role, "agent_index": i,
                             "iteration": iteration, "probs": probs if rng.random() > 0.05 else None,
                             "score": float(score), "valid": valid, "value": float(score) if valid else np.nan})
    return pd.DataFrame(rows)


def test_very_big_rows_by_hand():
    surveys = _surveys()
    rows = {(r["metric"], r["role"]): r for r in very_big_rows(surveys, PEW4)}
    assert all(list(r) == COLUMNS for r in rows.values())
    assert {m for m, _ in rows} == {"p_very_big_before", "p_very_big_after", "share_very_big_before",
                                    "share_very_big_after"}
    for point, iteration in (("before", 0), ("after", 6)):
        at = surveys[(surveys["role"] == "republican") & (surveys["iteration"] == iteration)]
        with_probs = at[at["probs"].notna()]
        per_debate = with_probs.assign(p=[p[3] for p in with_probs["probs"]]).groupby("debate_id")["p"].mean()
        row = rows[f"p_very_big_{point}", "republican"]
        half = sps.t.ppf(0.975, len(per_debate) - 1) * per_debate.std(ddof=1) / np.sqrt(len(per_debate))
        assert row["estimate"] == pytest.approx(per_debate.mean()) and row["n"] == len(per_debate)
        assert row["ci_low"] == pytest.approx(per_debate.mean() - half)
        valid = at[at["valid"]]
        hits = int((valid["score"] == 3).sum())
        ci = sps.binomtest(hits, len(valid)).proportion_ci(method="wilson")
        share = rows[f"share_very_big_{point}", "republican"]
        assert share["estimate"] == pytest.approx(hits / len(valid)) and share["n"] == len(valid)
        assert (share["ci_low"], share["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert rows["p_very_big_before", "republican"]["reference"] == pytest.approx(0.38)
    assert rows["p_very_big_before", "default"]["reference"] == pytest.approx(0.60)
    assert "Before the debate, Republican agents put" in rows["p_very_big_before", "republican"]["reading"]
    assert "Pew (June 2023): 38% of Republicans." in rows["p_very_big_before", "republican"]["reading"]


def test_very_big_rows_unknown_figures_and_other_scales():
    rows = very_big_rows(_surveys(topic="racism"), PEW4)
    default = [r for r in rows if r["role"] == "default"]
    assert default and all(np.isnan(r["reference"]) for r in default)  # Pew's all-adults racism share: not found
    assert all(np.isnan(r["reference"]) for r in very_big_rows(_surveys(topic="my_topic"), PEW4))
    assert very_big_rows(_surveys(), ZERO_TEN) == []
    only = very_big_rows(_surveys(), PEW4, iterations=(6,))
    assert {r["metric"] for r in only} == {"p_very_big_at_6", "share_very_big_at_6"}


def test_very_big_rows_without_distributions():
    surveys = _surveys().assign(probs=None)
    row = next(r for r in very_big_rows(surveys, PEW4) if r["metric"] == "p_very_big_before")
    assert row["n"] == 0 and np.isnan(row["estimate"]) and "not computed" in row["reading"]


def test_representativeness_rows_with_pew():
    surveys = _surveys()
    rows = representativeness_rows(surveys, PEW4, pew_distributions(), seed=1, n_boot=200)
    assert [(r["metric"], r["role"]) for r in rows] == [("representativeness", "default")]  # Pew: all adults only
    row = rows[0]
    at = surveys[(surveys["role"] == "default") & (surveys["iteration"] == 0) & surveys["probs"].notna()]
    model = np.mean([np.mean(g.to_list(), axis=0) for _, g in at.groupby("debate_id")["probs"]], axis=0)
    assert row["estimate"] == pytest.approx(representativeness(model, [.04, .13, .23, .60]))
    assert row["ci_low"] <= row["estimate"] <= row["ci_high"] and row["n"] == 12 and np.isnan(row["reference"])
    assert "Pew all adults, June 2023" in row["reading"] and "1 = the same distribution" in row["reading"]
    again = representativeness_rows(surveys, PEW4, pew_distributions(), seed=1, n_boot=200)[0]
    assert (again["ci_low"], again["ci_high"]) == (row["ci_low"], row["ci_high"])  # seeded


def test_representativeness_rows_with_a_csv_and_a_mapping(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text(HEADER + "".join(f"gun_violence,rep voters,pew4,{k},{w}\n" for k, w in enumerate([40, 30, 20, 10])))
    humans = load_human_distributions(path)
    assert representativeness_rows(_surveys(), PEW4, humans) == []  # no group named republican
    rows = representativeness_rows(_surveys(), PEW4, humans, group_of_role={"republican": "rep_voters"},
                                   iteration="last", n_boot=50)
    assert [(r["metric"], r["role"]) for r in rows] == [("representativeness_after", "republican")]
    assert "group 'rep_voters' of h.csv" in rows[0]["reading"] and rows[0]["reading"].startswith("After the debate")
    assert representativeness_rows(_surveys(), ZERO_TEN, humans) == []  # the run's scale must match
