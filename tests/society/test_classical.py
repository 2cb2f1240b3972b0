"""Classical opinion-dynamics baselines against matrix computations done here by hand, closed
forms, and hand-worked bounded-confidence cases."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from test_measures import write_society

from debatelab.society.classical import (
    COLUMNS, COMPARISON_COLUMNS, compare_classical, deffuant, degroot, friedkin_johnsen, influence_matrix,
    initial_values, pairwise_averaging, run_classical)
from debatelab.society.frames import load_society


def small_graph() -> nx.Graph:
    """0-1-2-0 triangle, 2-3, 3-4; 5 isolated."""
    g = nx.Graph([(0, 1), (1, 2), (0, 2), (2, 3), (3, 4)])
    g.add_node(5)
    return g


def manual_w(g: nx.Graph, self_weight: float | None = None) -> np.ndarray:
    n = g.number_of_nodes()
    w = np.zeros((n, n))
    for i in range(n):
        nbrs = list(g.neighbors(i))
        own = 1 / (len(nbrs) + 1) if self_weight is None else self_weight
        w[i, i] = 1.0 if not nbrs else own
        for j in nbrs:
            w[i, j] = (1 - own) / len(nbrs)
    return w


X0 = np.array([1.0, 9.0, 4.0, 7.0, 2.0, 6.0])


@pytest.mark.parametrize("self_weight", [None, 0.5, 0.0])
def test_influence_matrix_is_the_row_normalised_adjacency_with_self_loops(self_weight):
    g = small_graph()
    w = influence_matrix(g, range(6), self_weight).toarray()
    assert np.allclose(w, manual_w(g, self_weight)) and np.allclose(w.sum(axis=1), 1.0)
    assert w[5, 5] == 1.0  # isolated: keeps its value
    if self_weight is None:
        assert np.allclose(w[2], [0.25, 0.25, 0.25, 0.25, 0, 0])


def test_degroot_and_friedkin_johnsen_match_the_matrix_recursion():
    g = small_graph()
    w = manual_w(g)
    path = degroot(influence_matrix(g, range(6)), X0, 5)
    x = X0.copy()
    for t in range(1, 6):
        x = w @ x
        assert np.allclose(path[t], x)
    assert path.shape == (6, 6) and np.allclose(path[0], X0) and np.allclose(path[:, 5], 6.0)
    lam = np.diag(np.full(6, 0.7))
    fj = friedkin_johnsen(influence_matrix(g, range(6)), X0, 5, susceptibility=0.7)
    y = X0.copy()
    for t in range(1, 6):
        y = lam @ w @ y + (np.eye(6) - lam) @ X0
        assert np.allclose(fj[t], y)


def test_friedkin_johnsen_settles_at_its_closed_form():
    g = small_graph()
    w = influence_matrix(g, range(6)).toarray()
    lam = 0.8 * np.eye(6)
    closed = np.linalg.solve(np.eye(6) - lam @ w, (np.eye(6) - lam) @ X0)
    assert np.allclose(friedkin_johnsen(w, X0, 300)[-1], closed, atol=1e-9)
    assert not np.allclose(closed, closed.mean())  # stubbornness keeps disagreement alive
    assert np.allclose(friedkin_johnsen(w, X0, 50, susceptibility=0.0)[-1], X0)


def test_degroot_reaches_the_stationary_degree_weighted_mean_on_a_connected_graph():
    g = nx.connected_watts_strogatz_graph(30, 4, 0.3, seed=2)
    x0 = np.random.default_rng(0).uniform(0, 10, 30)
    w = influence_matrix(g, range(30)).toarray()
    final = degroot(w, x0, 2000)[-1]
    # with equal self and neighbour weights the stationary distribution is proportional to degree + 1
    pi = np.array([g.degree(i) + 1 for i in range(30)], float)
    pi /= pi.sum()
    values, vectors = np.linalg.eig(w.T)
    stationary = np.real(vectors[:, np.argmin(abs(values - 1))])
    assert np.allclose(stationary / stationary.sum(), pi)
    assert np.allclose(final, pi @ x0, atol=1e-8) and not math.isclose(pi @ x0, x0.mean(), abs_tol=1e-3)


def test_deffuant_on_a_hand_made_case():
    x0 = np.array([2.0, 4.0, 1.0, 8.0, 3.0, 4.0, 5.0, 9.0, 2.0, 4.0, 9.0])
    encounters = [[[0, 1], [2, 3], [4, 5, 6], [8, 9, 10]]]  # agent 7 meets nobody
    after = deffuant(x0, encounters, epsilon=3.0, mu=0.3)[1]
    expected = x0.copy()
    expected[[0, 1]] = [2.6, 3.4]  # within ε: the classic pair update
    # 2 and 3 are 7 apart: nobody moves; 7 meets nobody
    expected[[4, 5, 6]] = [3 + 0.3 * 1.5, 4.0, 5 - 0.3 * 1.5]  # mean difference to both others
    expected[[8, 9, 10]] = [2.6, 3.4, 9.0]  # 10 is too far from both; 8 and 9 listen only to each other
    assert np.allclose(after, expected)
    chained = deffuant(np.array([0.0, 2.0, 4.0]), [[[0, 1], [1, 2]]], epsilon=5.0, mu=0.5)[1]
    assert np.allclose(chained, [1.0, 2.5, 2.5])  # an agent in two encounters of a step: in order
    exact = deffuant(np.array([2.0, 5.0]), [[[0, 1]]], epsilon=3.0)[1]
    assert np.allclose(exact, [2.0, 5.0])  # |x_i − x_j| < ε is strict


def test_pairwise_averaging_is_unbounded_deffuant_and_keeps_the_mean():
    rng = np.random.default_rng(4)
    x0 = rng.uniform(0, 10, 40)
    steps = []
    for _ in range(15):
        order = rng.permutation(40)
        steps.append([list(order[i:i + 2]) for i in range(0, 26, 2)] + [list(order[26:29]), list(order[29:32])])
    path = pairwise_averaging(x0, steps, influence=0.4)
    assert np.allclose(path.mean(axis=1), x0.mean())
    assert np.allclose(path, deffuant(x0, steps, epsilon=math.inf, mu=0.4))
    assert path[-1].std() < 0.5 * x0.std()
    assert np.allclose(pairwise_averaging(np.array([0.0, 10.0]), [[[0, 1]]], influence=0.5)[1], [5.0, 5.0])


def test_invalid_starting_values_become_the_party_mean(tmp_path):
    panel = pd.DataFrame({"topic": "t", "step": 0, "agent": range(5),
                          "party": ["republican", "republican", "republican", "democrat", "default"],
                          "value": [2.0, np.nan, 4.0, 8.0, np.nan]})
    assert np.allclose(initial_values(panel, "t", range(5)), [2.0, 3.0, 4.0, 8.0, 14 / 3])


def test_run_classical_on_a_society(tmp_path):
    data = load_society(write_society(tmp_path / "run", invalid=0.1))
    frame = run_classical(data)
    assert list(frame.columns) == COLUMNS
    assert set(frame["model"]) == {"degroot", "friedkin_johnsen", "deffuant", "pairwise_averaging"}
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3] and frame["value"].notna().all()
    start = data.panel[data.panel["step"] == 0].dropna(subset=["value"])
    at0 = frame[(frame["step"] == 0) & (frame["model"] == "deffuant")].merge(start, on=["topic", "agent"])
    assert np.allclose(at0["value_x"], at0["value_y"])
    # the isolated agent never moves; nor does anyone in Deffuant at a step they met nobody
    assert frame[frame["agent"] == 11].groupby(["model", "topic"])["value"].nunique().eq(1).all()
    deff = frame[frame["model"] == "deffuant"].set_index(["topic", "step", "agent"])["value"]
    met = set(map(tuple, data.members()[["topic", "step", "agent"]].to_numpy().tolist()))
    idle = [(t, s, a) for t in ("t1", "t2") for s in (1, 2, 3) for a in range(12) if (t, s, a) not in met]
    assert len(idle) > 6 and all(deff[(t, s, a)] == deff[(t, s - 1, a)] for t, s, a in idle)
    table = compare_classical(data.panel, frame)
    assert list(table.columns) == COMPARISON_COLUMNS and len(table) == 2 * 5
    society = table[table["model"] == "society"]
    assert (society["rmse"] == 0).all() and (society["step"] == 3).all()
    last = data.panel[(data.panel["topic"] == "t1") & (data.panel["step"] == 3)].dropna(subset=["value"])
    row = society[society["topic"] == "t1"].iloc[0]
    assert row["polarization"] == pytest.approx(last.loc[last["party"] == "democrat", "value"].mean()
                                                - last.loc[last["party"] == "republican", "value"].mean())
    assert (table.loc[table["model"] != "society", "rmse"] > 0).all()
