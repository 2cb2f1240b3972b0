"""Societies on the known-answer backend: what pairwise averaging and a pull predict, exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from debatelab.config import load_config
from debatelab.experiment import run_experiment

TOPIC = "gun_violence"


def society(tmp_path: Path, model: str, name: str = "s", **section: object) -> Path:
    body = {"population": 200, "steps": 3, "network": {"kind": "complete"}, "memory": "turns", **section}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": model, "topics": [TOPIC], "seed": 3, "society": body,
                                    "survey": {"method": "logprobs"}}))
    return path


def run(tmp_path: Path, model: str, name: str = "s", **section: object) -> Path:
    out = tmp_path / f"run_{name}"
    summary = run_experiment(load_config(society(tmp_path, model, name, **section)), out)
    assert summary.complete == summary.debates and summary.society["stopped"] == ""
    return out


def panel(out: Path) -> np.ndarray:
    """steps+1 x agents: each agent's expected score at each step."""
    rows = list(csv.DictReader((out / "panel.csv").open()))
    steps, agents = max(int(r["step"]) for r in rows) + 1, max(int(r["agent"]) for r in rows) + 1
    values = np.full((steps, agents), np.nan)
    for r in rows:
        values[int(r["step"]), int(r["agent"])] = float(r["expected_score"])
    return values


def encounters(out: Path) -> dict[int, list[list[int]]]:
    out_: dict[int, list[list[int]]] = {}
    for r in csv.DictReader((out / "encounters.csv").open()):
        out_.setdefault(int(r["step"]), []).append([int(a) for a in r["agents"].split()])
    return out_


@pytest.mark.parametrize("memory", ["turns", "summary"])
def test_pairwise_averaging_preserves_the_mean_and_shrinks_the_variance_as_predicted(tmp_path, memory):
    b, n = 0.3, 200
    out = run(tmp_path, f"opinion-sim:pull=0,influence={b},noise=0", memory=memory)
    x, met = panel(out), encounters(out)
    predicted_ratio = (1 - b) ** 2 + b ** 2 - 2 * b * (1 - b) / (n - 1)
    for step in (1, 2, 3):
        before, after = x[step - 1], x[step]
        assert abs(after.mean() - before.mean()) < 0.02
        assert abs(after.var() / before.var() - predicted_ratio) < 0.08
        # Agent by agent: x_i <- x_i + b (x_j - x_i) on the encounters the society really had.
        expected = before.copy()
        for i, j in met[step]:
            expected[i], expected[j] = before[i] + b * (before[j] - before[i]), before[j] + b * (before[i] - before[j])
        assert len(met[step]) == n // 2  # a complete graph pairs everyone
        assert np.abs(after - expected).max() < 0.1  # statements round attitudes to 0.1
    # The model's own attitude comes from the Default probes surveyed alone (opinion-sim: D = 6).
    import json

    assert abs(json.loads((out / "society.json").read_text())["default_attitude"][TOPIC] - 6.0) < 0.6


def test_a_pull_draws_the_population_to_the_default_attitude(tmp_path):
    a, d = 0.3, 6.0
    out = run(tmp_path, f"opinion-sim:pull={a},influence=0,noise=0,default={d}", steps=4,
              mix={"republican": 0.4, "democrat": 0.4, "default": 0.2})
    x = panel(out)
    for step in range(1, 5):
        assert np.abs((x[step] - d) - (1 - a) ** step * (x[0] - d)).max() < 0.15
    assert np.abs(x[4] - d).mean() < 0.3 * np.abs(x[0] - d).mean()


def test_without_memory_nothing_carries_over(tmp_path):
    out = run(tmp_path, "opinion-sim:pull=0,influence=0.5,noise=0", memory="none", population=20)
    x = panel(out)
    assert np.array_equal(x[0], x[3])  # each encounter starts from the persona alone
    rows = list(csv.DictReader((out / "panel.csv").open()))
    sha = {(r["step"], r["agent"]): r["prompt_sha"] for r in rows}
    assert all(sha[("3", a)] == sha[("0", a)] for a in map(str, range(20)))  # the very same prompt


def test_exports_are_complete_and_a_rerun_is_identical(tmp_path):
    out = run(tmp_path, "scripted", population=30, steps=2, encounter_size=3,
              network={"kind": "watts_strogatz", "degree": 4}, memory="summary")
    agents = list(csv.DictReader((out / "agents.csv").open()))
    edges = list(csv.DictReader((out / "edges.csv").open()))
    assert len(agents) == 30 and {a["party"] for a in agents} == {"republican", "democrat"}
    assert sum(int(a["degree"]) for a in agents) == 2 * len(edges)
    edge_set = {(int(e["source"]), int(e["target"])) for e in edges}
    met = encounters(out)
    for groups in met.values():
        seen = [a for g in groups for a in g]
        assert len(seen) == len(set(seen))  # nobody in two encounters of one step
        for first, *rest in groups:  # a triad is an agent and two of its neighbours
            assert all((min(first, r), max(first, r)) in edge_set for r in rest)
    rows = list(csv.DictReader((out / "panel.csv").open()))
    assert len(rows) == 30 * 3 and {r["step"] for r in rows} == {"0", "1", "2"}
    turns = list(csv.DictReader((out / "turns.csv").open()))
    assert len(turns) == sum(len(g) for groups in met.values() for g in groups)  # encounters only, 1 round
    notes = list(csv.DictReader((out / "memories.csv").open()))
    assert len(notes) == len(turns)  # one note per agent per encounter
    again = run(tmp_path, "scripted", name="t", population=30, steps=2, encounter_size=3,
                network={"kind": "watts_strogatz", "degree": 4}, memory="summary")
    for name in ("agents.csv", "edges.csv", "encounters.csv", "panel.csv", "turns.csv", "memories.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_a_memory_reaches_the_next_encounter_and_the_panel(tmp_path):
    from debatelab.store import open_store

    out = run(tmp_path, "scripted", population=6, steps=2, memory="summary")
    store = open_store(out)
    try:
        specs = [row[0] for row in store.db.execute(
            "SELECT d.spec_json FROM debates d JOIN society_units u USING (debate_id)"
            " WHERE u.kind = 'encounter' AND u.step = 2")]
        notes = {row[0] for row in store.db.execute(
            "SELECT t.text FROM turns t JOIN society_units u USING (debate_id) WHERE u.kind = 'summary' AND u.step = 1")}
    finally:
        store.close()
    import json

    memories = {a["memory"] for s in specs for a in json.loads(s)["agents"]}
    assert memories and memories <= notes  # every step-2 encounter agent remembers its own step-1 note


def test_the_attractor_fit_on_the_panel_recovers_the_simulated_pull_and_influence(tmp_path):
    from debatelab.society.frames import load_society
    from debatelab.society.measures import default_attitudes, society_attractor

    out = run(tmp_path, "opinion-sim:pull=0.2,influence=0.3,noise=0.2,default=6", population=300, steps=4,
              network={"kind": "erdos_renyi", "degree": 8})
    data = load_society(out)
    defaults = default_attitudes(data.panel, data.declared_defaults())
    fit = society_attractor(data.panel, data.members(), defaults, n_boot=200)
    for metric, truth in (("attractor_pull", 0.2), ("attractor_influence", 0.3)):
        rows = fit[fit["metric"] == metric]
        assert len(rows), fit
        assert (abs(rows["estimate"] - truth) < 0.08).all(), rows[["role", "estimate", "ci_low", "ci_high"]]
        assert ((rows["ci_low"] < truth) & (truth < rows["ci_high"])).mean() >= 0.5  # intervals mostly cover it


def test_a_report_of_two_societies_keeps_each_ones_figures(tmp_path):
    from debatelab.analysis.report import build_report

    a = run(tmp_path, "opinion-sim:influence=0.3", name="a", population=20, steps=2)
    b = run(tmp_path, "opinion-sim:influence=0.6", name="b", population=20, steps=2)
    html = build_report([a, b], tmp_path / "report").read_text()
    figures = {p.name for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert {"01-a-society-trajectories.png", "02-b-society-trajectories.png"} <= figures
    assert html.count("<h3>Party trajectories</h3>") == 2 and "<script" not in html
    summary = (tmp_path / "report" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1  # a society's panel is not pooled into debate aggregates
