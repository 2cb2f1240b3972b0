"""Society frames and measures against formulas computed apart (numpy, scipy, networkx), on
synthetic society run directories written here. ``write_society`` is shared with the other
society tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from debatelab.analysis.stats import summarise
from debatelab.errors import DebatelabError
from debatelab.society.frames import load_society
from debatelab.society.measures import (
    BIMODAL_THRESHOLD, MEASURE_COLUMNS, SUMMARY_COLUMNS, attractor_surveys, bimodality_coefficient,
    default_attitudes, opinion_assortativity, party_summary, society_attractor, society_measures)

START = {"republican": 2.5, "democrat": 7.5, "default": 5.0}


def society_graph(n: int, seed: int = 0) -> nx.Graph:
    """A ring with seeded chords over agents 0..n-2; the last agent is isolated."""
    rng = np.random.default_rng(seed)
    g = nx.cycle_graph(n - 1)
    for _ in range(n // 2):
        u, v = rng.choice(n - 1, 2, replace=False)
        g.add_edge(int(u), int(v))
    g.add_node(n - 1)
    return g


def write_society(root: Path, n: int = 12, steps: int = 3, topics=("t1", "t2"), pull: float = 0.2,
                  influence: float = 0.3, noise: float = 0.3, seed: int = 1, invalid: float = 0.05,
                  meta: dict | None = None, parties=None) -> Path:
    """A society run directory whose attitudes follow x ← x + pull·(5 − x) + influence·(m − x) + noise
    inside each encounter (pairs along the graph's edges), with some invalid surveys."""
    rng = np.random.default_rng(seed)
    g = society_graph(n, seed)
    parties = parties or [("republican", "democrat", "default")[i % 3] for i in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"agent": range(n), "name": [f"A{i}" for i in range(n)], "party": parties,
                  "persona_id": "", "community": "", "degree": [g.degree(i) for i in range(n)]}
                 ).to_csv(root / "agents.csv", index=False)
    pd.DataFrame(sorted((min(e), max(e)) for e in g.edges()), columns=["source", "target"]).to_csv(
        root / "edges.csv", index=False)
    panel, encounters = [], []
    for topic in topics:
        x = np.array([rng.normal(START[p], 0.7) for p in parties]).clip(0, 10)
        for step in range(steps + 1):
            if step:
                edges = list(g.edges())
                rng.shuffle(edges)
                busy: set[int] = set()
                new = x.copy()
                for u, v in edges:
                    if u in busy or v in busy:
                        continue
                    busy |= {u, v}
                    k = len(encounters)
                    encounters.append({"topic": topic, "step": step, "encounter": k, "debate_id": f"d{topic}{k}",
                                       "agents": f"{u} {v}"})
                    for a, b in ((u, v), (v, u)):
                        new[a] = x[a] + pull * (5 - x[a]) + influence * (x[b] - x[a]) + rng.normal(0, noise)
                x = new.clip(0, 10)
            for agent in range(n):
                ok = rng.random() >= invalid
                panel.append({"topic": topic, "step": step, "agent": agent, "party": parties[agent],
                              "method": "both", "score": round(x[agent]) if ok else "", "valid": int(ok),
                              "expected_score": x[agent], "option_mass": 0.9, "source": "logprobs", "raw": "x",
                              **{f"p{i}": 0.0 for i in range(11)}, "prompt_sha": "s"})
    pd.DataFrame(panel).to_csv(root / "panel.csv", index=False)
    pd.DataFrame(encounters, columns=["topic", "step", "encounter", "debate_id", "agents"]).to_csv(
        root / "encounters.csv", index=False)
    base = {"default_attitude": None, "measure": "greedy", "steps": steps, "population": n,
            "network": {"kind": "ring"}, "topics": {t: f"Topic {t}" for t in topics}}
    (root / "society.json").write_text(json.dumps({**base, **(meta or {})}))
    return root


# ---- frames -------------------------------------------------------------------------------------


def test_load_society_reads_values_by_measure_and_keeps_isolated_agents(tmp_path):
    run = write_society(tmp_path / "run", invalid=0.2)
    greedy, expected = load_society(run), load_society(run, measure="expected")
    raw = pd.read_csv(run / "panel.csv")
    assert greedy.measure == "greedy" and expected.measure == "expected"
    invalid = raw["valid"] == 0
    assert invalid.any() and greedy.panel["value"][invalid.to_numpy()].isna().all()
    assert np.allclose(greedy.panel["value"][~invalid.to_numpy()], raw["score"][~invalid])
    assert np.allclose(expected.panel["value"], raw["expected_score"])
    g = greedy.graph()
    assert g.number_of_nodes() == 12 and g.degree(11) == 0
    assert greedy.topics == ["t1", "t2"] and greedy.steps == 3
    members = greedy.members()
    assert list(members.columns) == ["topic", "step", "encounter", "debate_id", "agent"]
    assert len(members) == 2 * len(greedy.encounters)


@pytest.mark.parametrize("name", ["agents.csv", "edges.csv", "encounters.csv", "panel.csv", "society.json"])
def test_a_missing_file_is_named_in_one_line(tmp_path, name):
    run = write_society(tmp_path / "run")
    (run / name).unlink()
    with pytest.raises(DebatelabError, match=name.replace(".", r"\.")) as err:
        load_society(run)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, edit, message", [
    ("encounters.csv", lambda f: f.assign(agents="3 x"), "encounters.csv: agents must be"),
    ("edges.csv", lambda f: f.assign(target=99), "edges.csv names agent"),
    ("panel.csv", lambda f: f.drop(columns="expected_score"), "panel.csv lacks column"),
    ("agents.csv", lambda f: f.assign(party="green"), "unknown party 'green'"),
])
def test_malformed_files_are_named(tmp_path, name, edit, message):
    run = write_society(tmp_path / "run")
    edit(pd.read_csv(run / name)).to_csv(run / name, index=False)
    with pytest.raises(DebatelabError, match=message):
        load_society(run)


def test_bad_measure_and_bad_json_are_refused(tmp_path):
    run = write_society(tmp_path / "run")
    with pytest.raises(DebatelabError, match="unknown survey measure"):
        load_society(run, measure="mode")
    (run / "society.json").write_text("{not json")
    with pytest.raises(DebatelabError, match="society.json"):
        load_society(run)


# ---- summaries ----------------------------------------------------------------------------------


def test_party_summary_matches_summarise_and_counts_invalid(tmp_path):
    data = load_society(write_society(tmp_path / "run", invalid=0.25))
    table = party_summary(data.panel)
    assert list(table.columns) == SUMMARY_COLUMNS
    p = data.panel
    for (topic, step, party), row in table.set_index(["topic", "step", "party"]).iterrows():
        mine = p[(p["topic"] == topic) & (p["step"] == step) & ((p["party"] == party) | (party == "all"))]
        expected = summarise(mine["value"])
        assert row["n"] == mine["value"].notna().sum() and row["invalid"] == mine["value"].isna().sum()
        assert row["mean"] == pytest.approx(expected["mean"]) and row["ci_high"] == pytest.approx(expected["ci_high"], nan_ok=True)
    assert set(table["party"]) == {"republican", "democrat", "default", "all"}
    assert table["invalid"].sum() > 0


def _sarle(x):
    """Sarle's BC from the moments, by hand (SAS's G1 and G2)."""
    x = np.asarray(x, float)
    n, d = len(x), x - x.mean()
    m2, m3, m4 = (d ** 2).mean(), (d ** 3).mean(), (d ** 4).mean()
    g1, g2 = m3 / m2 ** 1.5, m4 / m2 ** 2 - 3
    skew = math.sqrt(n * (n - 1)) / (n - 2) * g1
    kurt = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    return (skew ** 2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def test_bimodality_coefficient_matches_scipy_and_the_moments():
    rng = np.random.default_rng(3)
    for x in (rng.normal(5, 1, 40), rng.exponential(2, 25), np.r_[rng.normal(2, .5, 30), rng.normal(8, .5, 30)]):
        g, k, n = sps.skew(x, bias=False), sps.kurtosis(x, bias=False), len(x)
        scipy_bc = (g ** 2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
        assert bimodality_coefficient(x) == pytest.approx(scipy_bc) == pytest.approx(_sarle(x))
    two_modes = np.r_[np.full(20, 2.0), np.full(20, 8.0)] + rng.normal(0, 0.3, 40)
    assert bimodality_coefficient(two_modes) > BIMODAL_THRESHOLD > bimodality_coefficient(rng.normal(5, 1, 200))
    assert bimodality_coefficient([1.0, np.nan, 2.0, 3.0, 4.0]) == pytest.approx(_sarle([1, 2, 3, 4]))
    assert math.isnan(bimodality_coefficient([1.0, 2.0, 3.0])) and math.isnan(bimodality_coefficient([5.0] * 9))


def test_assortativity_is_newmans_numeric_coefficient():
    g = nx.karate_club_graph()
    rng = np.random.default_rng(0)
    values = {n: int(rng.integers(0, 11)) for n in g.nodes}
    nx.set_node_attributes(g, values, "x")
    assert opinion_assortativity(g, values) == pytest.approx(nx.numeric_assortativity_coefficient(g, "x"))
    sorted_by_group = {n: (8 if g.nodes[n]["club"] == "Officer" else 2) + int(rng.integers(0, 2)) for n in g.nodes}
    assert opinion_assortativity(g, sorted_by_group) > 0.3  # the two clubs hold apart
    # NaN endpoints drop their edges: the same as the coefficient on the rest of the graph
    gaps = {**values, 0: math.nan, 33: math.nan}
    rest = g.subgraph([n for n in g.nodes if n not in (0, 33)])
    assert opinion_assortativity(g, gaps) == pytest.approx(nx.numeric_assortativity_coefficient(rest, "x"))
    assert math.isnan(opinion_assortativity(g, {n: 4.0 for n in g.nodes}))
    assert math.isnan(opinion_assortativity(nx.empty_graph(5), {i: float(i) for i in range(5)}))


def test_society_measures_by_hand(tmp_path):
    data = load_society(write_society(tmp_path / "run", invalid=0.1))
    defaults = default_attitudes(data.panel)
    table = society_measures(data.panel, data.graph(), defaults)
    assert list(table.columns) == MEASURE_COLUMNS and len(table) == 2 * 4
    p = data.panel
    for row in table.to_dict("records"):
        at = p[(p["topic"] == row["topic"]) & (p["step"] == row["step"])].dropna(subset=["value"])
        rep, dem = (at.loc[at["party"] == q, "value"].mean() for q in ("republican", "democrat"))
        d = p[(p["topic"] == row["topic"]) & (p["step"] == 0) & (p["party"] == "default")]["value"].mean()
        partisans = at.loc[at["party"] != "default", "value"]
        assert row["polarization"] == pytest.approx(dem - rep) and row["default_attitude"] == pytest.approx(d)
        assert row["distance_partisans"] == pytest.approx((partisans - d).abs().mean())
        assert row["distance_population"] == pytest.approx(abs(at["value"].mean() - d))
        assert row["bimodality"] == pytest.approx(bimodality_coefficient(at["value"]))
        assert row["bimodal"] == (row["bimodality"] > 5 / 9)
        everyone = p[(p["topic"] == row["topic"]) & (p["step"] == row["step"])]
        assert row["assortativity"] == pytest.approx(
            opinion_assortativity(data.graph(), dict(zip(everyone["agent"], everyone["value"]))), nan_ok=True)
    assert (table[table["step"] == 0]["polarization"] > 2).all()  # the parties start 5 points apart


def test_defaults_prefer_the_declared_value_and_a_missing_party_gives_nan(tmp_path):
    parties = ["republican"] * 6 + ["default"] * 6
    data = load_society(write_society(tmp_path / "run", parties=parties, meta={"default_attitude": {"t1": 6.5}}))
    defaults = default_attitudes(data.panel, data.declared_defaults())
    assert defaults["t1"] == 6.5 and defaults["t2"] == pytest.approx(
        data.panel.query("topic == 't2' and step == 0 and party == 'default'")["value"].mean())
    table = society_measures(data.panel, data.graph(), defaults)
    assert table["polarization"].isna().all() and table["democrat_mean"].isna().all()
    no_default = load_society(write_society(tmp_path / "r2", parties=["republican", "democrat"] * 6)).panel
    assert all(math.isnan(v) for v in default_attitudes(no_default).values())
    assert society_measures(no_default, nx.empty_graph(12), {})["distance_partisans"].isna().all()


# ---- attractor ----------------------------------------------------------------------------------


def test_attractor_surveys_pair_step_values_of_each_encounter(tmp_path):
    data = load_society(write_society(tmp_path / "run", invalid=0.0))
    surveys = attractor_surveys(data.panel, data.members())
    enc = data.encounters.iloc[5]
    mine = surveys[surveys["debate_id"] == enc["debate_id"]].set_index(["agent_index", "iteration"])["value"]
    values = data.panel.set_index(["topic", "step", "agent"])["value"]
    for agent in enc["members"]:
        assert mine[(agent, 0)] == values[(enc["topic"], enc["step"] - 1, agent)]
        assert mine[(agent, 1)] == values[(enc["topic"], enc["step"], agent)]


def test_society_attractor_recovers_pull_and_influence(tmp_path):
    run = write_society(tmp_path / "run", n=90, steps=6, topics=("t1",), pull=0.2, influence=0.3, noise=0.2,
                        invalid=0.0, meta={"measure": "expected"})
    data = load_society(run)
    table = society_attractor(data.panel, data.members(), {"t1": 5.0}, n_boot=100)
    rows = table.set_index(["metric", "topic", "role"])
    for metric, truth in (("attractor_pull", 0.2), ("attractor_influence", 0.3)):
        row = rows.loc[(metric, "t1", "all")]
        assert abs(row["estimate"] - truth) < 0.06 and row["ci_low"] < truth < row["ci_high"], (metric, row)
    assert rows.loc[("attractor_drift", "t1", "all"), "estimate"] == pytest.approx(0.0, abs=0.15)
    assert {"republican", "democrat", "default", "all"} <= set(table["role"])
    unknown = society_attractor(data.panel, data.members(), {"t1": math.nan}, n_boot=20).set_index(
        ["metric", "topic", "role"])
    assert math.isnan(unknown.loc[("attractor_drift", "t1", "all"), "estimate"])
    assert unknown.loc[("attractor_pull", "t1", "all"), "estimate"] == pytest.approx(
        rows.loc[("attractor_pull", "t1", "all"), "estimate"])
