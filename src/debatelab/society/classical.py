"""Classical opinion-dynamics models run on the society's own graph from its own step-0 attitudes,
as baselines for what the LLM agents did.

- **DeGroot**: x ← W x, W the row-normalised adjacency with self-loops (:func:`influence_matrix`).
- **Friedkin–Johnsen**: x ← Λ W x + (I − Λ) x0; each agent keeps a share 1 − λ of its initial
  attitude (λ the susceptibility, the same for every agent).
- **Deffuant** bounded confidence, on the encounters the society actually had (per step): within
  an encounter every member moves toward the members within ε of it by μ times the mean
  difference to them (for a pair: x_i += μ(x_j − x_i) when |x_i − x_j| < ε). Updates within an
  encounter are simultaneous; agents in no encounter at a step keep their value.
- **Pairwise averaging** with influence b: Deffuant with ε = ∞ and μ = b (everyone listens).

Initial values are the panel's step-0 values; an invalid survey (NaN) is replaced by its party's
mean step-0 value on that topic (the mean of every agent when the party has none). Attitudes stay
on the survey's 0..10 scale: every update is a convex combination, so no clipping is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np
import pandas as pd
from scipy import sparse

from .frames import SocietyData

COLUMNS = ["model", "topic", "step", "agent", "value"]
COMPARISON_COLUMNS = ["topic", "model", "step", "republican_mean", "democrat_mean", "default_mean", "mean",
                      "polarization", "sd", "rmse"]
MODELS = ("degroot", "friedkin_johnsen", "deffuant", "pairwise_averaging")
Encounters = Sequence[Sequence[Sequence[int]]]
"""Per step 1..S, the encounters of that step, each a sequence of 2 or 3 agent positions."""


def influence_matrix(graph: nx.Graph, nodes: Sequence[int], self_weight: float | None = None) -> sparse.csr_array:
    """W (sparse, rows and columns in the order of ``nodes``): agent i puts weight ``self_weight``
    on its own attitude and spreads the rest equally over its neighbours. Default (None): equal
    weight 1/(deg + 1) on itself and on each neighbour. An isolated agent keeps all its weight."""
    if self_weight is not None and not 0 <= self_weight <= 1:
        raise ValueError(f"self_weight must lie in [0, 1], not {self_weight}")
    a = nx.to_scipy_sparse_array(graph, nodelist=list(nodes), weight=None, format="csr").astype(float)
    a.setdiag(0.0)  # a self-loop in the graph is not a neighbour
    a.eliminate_zeros()
    a.data[:] = 1.0
    degree = np.asarray(a.sum(axis=1)).ravel()
    share = 1.0 / (degree + 1.0) if self_weight is None else np.full(len(degree), float(self_weight))
    share = np.where(degree == 0, 1.0, share)
    w = sparse.diags_array((1.0 - share) / np.maximum(degree, 1.0)) @ a + sparse.diags_array(share)
    return sparse.csr_array(w)


def degroot(w: np.ndarray | sparse.sparray, x0: np.ndarray, steps: int) -> np.ndarray:
    """Trajectory (steps + 1, n) of x ← W x from x0."""
    out = [np.asarray(x0, dtype=float)]
    for _ in range(steps):
        out.append(w @ out[-1])
    return np.array(out)


def friedkin_johnsen(w: np.ndarray | sparse.sparray, x0: np.ndarray, steps: int, susceptibility: float = 0.8) -> np.ndarray:
    """Trajectory (steps + 1, n) of x ← Λ W x + (I − Λ) x0, Λ = susceptibility · I. Its fixed
    point (for λ < 1) is (I − ΛW)⁻¹ (I − Λ) x0."""
    if not 0 <= susceptibility <= 1:
        raise ValueError(f"susceptibility must lie in [0, 1], not {susceptibility}")
    x0 = np.asarray(x0, dtype=float)
    out = [x0]
    for _ in range(steps):
        out.append(susceptibility * (w @ out[-1]) + (1.0 - susceptibility) * x0)
    return np.array(out)


def deffuant(x0: np.ndarray, encounters: Encounters, epsilon: float = 3.0, mu: float = 0.3) -> np.ndarray:
    """Trajectory (len(encounters) + 1, n) of bounded-confidence updates on the given encounters:
    within each encounter, member i moves by μ · mean(x_j − x_i) over the other members j with
    |x_i − x_j| < ε (all members update from their values before the encounter). Encounters of
    one step that share no agent are updated together; shared agents are updated in order."""
    if not 0 <= mu <= 1:
        raise ValueError(f"mu must lie in [0, 1], not {mu}")
    x = np.asarray(x0, dtype=float).copy()
    out = [x.copy()]
    for step in encounters:
        flat = [a for group in step for a in group]
        disjoint = len(flat) == len(set(flat))
        batches = ([np.asarray([g for g in step if len(g) == k], dtype=int) for k in sorted({len(g) for g in step})]
                   if disjoint else [np.asarray([g], dtype=int) for g in step])
        for idx in batches:  # idx: (encounters, members)
            x[idx] = _bounded_step(x[idx], epsilon, mu)
        out.append(x.copy())
    return np.array(out)


def _bounded_step(before: np.ndarray, epsilon: float, mu: float) -> np.ndarray:
    """One bounded-confidence update of encounters of equal size, ``before`` (encounters, members)."""
    diff = before[:, None, :] - before[:, :, None]  # diff[e, i, j] = x_j − x_i
    near = (np.abs(diff) < epsilon) & ~np.eye(before.shape[1], dtype=bool)
    count = near.sum(axis=2)
    pull = np.where(count > 0, (diff * near).sum(axis=2) / np.maximum(count, 1), 0.0)
    return before + mu * pull


def pairwise_averaging(x0: np.ndarray, encounters: Encounters, influence: float = 0.3) -> np.ndarray:
    """Deffuant with ε = ∞ and μ = ``influence`` (b): every member of an encounter moves a share b
    of the way toward the mean of its partners. Preserves the population mean."""
    return deffuant(x0, encounters, epsilon=math.inf, mu=influence)


def initial_values(panel: pd.DataFrame, topic: str, nodes: Sequence[int]) -> np.ndarray:
    """Step-0 values of ``nodes`` on ``topic``; a NaN (invalid or missing survey) becomes its
    party's mean step-0 value, or the mean of every agent when its party has no valid one."""
    start = panel[(panel["topic"].astype(str) == str(topic)) & (panel["step"] == 0)].set_index("agent")
    values = start["value"].reindex(nodes).astype(float)
    party = start["party"].reindex(nodes)
    filled = values.fillna(values.groupby(party).transform("mean")).fillna(values.mean())
    return filled.to_numpy(float)


def encounter_positions(data: SocietyData, topic: str, nodes: Sequence[int], steps: int) -> list[list[list[int]]]:
    """The encounters of ``topic`` per step 1..steps, as positions into ``nodes``."""
    where = {int(n): i for i, n in enumerate(nodes)}
    mine = data.encounters[data.encounters["topic"].astype(str) == str(topic)]
    by_step = {int(s): [[where[a] for a in m] for m in g["members"]] for s, g in mine.groupby("step")}
    return [by_step.get(s, []) for s in range(1, steps + 1)]


def run_classical(data: SocietyData, *, steps: int | None = None, self_weight: float | None = None,
                  susceptibility: float = 0.8, epsilon: float = 3.0, mu: float = 0.3,
                  influence: float = 0.3) -> pd.DataFrame:
    """Every model of :data:`MODELS` per topic for steps 0..S (S = ``steps`` or the run's), from
    the panel's step-0 values on the run's graph. Pairwise averaging's default influence equals
    Deffuant's default μ, so the two differ only in ε. Columns: :data:`COLUMNS`."""
    graph = data.graph()
    nodes = sorted(int(n) for n in graph.nodes)
    steps = data.steps if steps is None else steps
    w = influence_matrix(graph, nodes, self_weight)
    frames = []
    for topic in data.topics:
        x0 = initial_values(data.panel, topic, nodes)
        met = encounter_positions(data, topic, nodes, steps)
        runs = {"degroot": degroot(w, x0, steps), "friedkin_johnsen": friedkin_johnsen(w, x0, steps, susceptibility),
                "deffuant": deffuant(x0, met, epsilon, mu), "pairwise_averaging": pairwise_averaging(x0, met, influence)}
        for model, path in runs.items():
            frames.append(pd.DataFrame({"model": model, "topic": topic, "step": np.repeat(np.arange(steps + 1), len(nodes)),
                                        "agent": np.tile(nodes, steps + 1), "value": path.ravel()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def compare_classical(panel: pd.DataFrame, classical: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """At ``step`` (default: the last step of the panel, per topic), the society (model
    ``society``, valid values only) beside every classical model: party means, population mean,
    polarization (democrat − republican), sd and ``rmse``, the root mean square difference between
    the model's and the society's value over agents with a valid survey (0 for the society).
    Columns: :data:`COMPARISON_COLUMNS`."""
    parties = panel.drop_duplicates("agent").set_index("agent")["party"]
    rows = []
    for topic, observed in panel.groupby(panel["topic"].astype(str), sort=True):
        at = int(observed["step"].max()) if step is None else int(step)
        seen = observed[observed["step"] == at].set_index("agent")["value"]
        mine = classical[(classical["topic"].astype(str) == topic) & (classical["step"] == at)]
        rows.append(_row(topic, "society", at, seen.dropna(), parties, seen))
        for model, group in mine.groupby("model", sort=False):
            rows.append(_row(topic, str(model), at, group.set_index("agent")["value"], parties, seen))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _row(topic: str, model: str, step: int, values: pd.Series, parties: pd.Series, seen: pd.Series) -> dict:
    party = values.index.map(parties)
    means = {p: float(values[party == p].mean()) if (party == p).any() else math.nan
             for p in ("republican", "democrat", "default")}
    both = pd.concat([values.rename("model"), seen.rename("seen")], axis=1, join="inner").dropna()
    rmse = float(np.sqrt(((both["model"] - both["seen"]) ** 2).mean())) if len(both) else math.nan
    return {"topic": topic, "model": model, "step": step, "republican_mean": means["republican"],
            "democrat_mean": means["democrat"], "default_mean": means["default"],
            "mean": float(values.mean()) if len(values) else math.nan,
            "polarization": means["democrat"] - means["republican"],
            "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan, "rmse": rmse}
