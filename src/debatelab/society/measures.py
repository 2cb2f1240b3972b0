"""Population-scale measures of a society run, as pure functions of its frames.

Every function takes the panel (one row per topic, step and agent with ``value``, the attitude
by the run's measure; NaN = invalid survey) and, where needed, the graph, the encounters or the
model's default attitude D per topic, and returns a tidy DataFrame whose columns its docstring
lists. Invalid surveys are left out of every statistic and counted where a table has ``invalid``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
from scipy import stats as sps

from ..analysis.stats import summarise

PARTISAN = ("republican", "democrat")
PARTY_ORDER = ("republican", "democrat", "default", "all")
BIMODAL_THRESHOLD = 5 / 9
"""Sarle's bimodality coefficient of the uniform distribution; larger suggests two modes."""
SUMMARY_COLUMNS = ["topic", "step", "party", "n", "mean", "sd", "se", "ci_low", "ci_high", "invalid"]
MEASURE_COLUMNS = ["topic", "step", "n", "republican_mean", "democrat_mean", "polarization", "bimodality",
                   "bimodal", "default_attitude", "distance_partisans", "distance_population", "assortativity"]


def party_summary(panel: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (topic, step, party), and per (topic, step) over every agent (party ``all``): n (valid
    surveys), mean, sd, se and the two-sided t interval (:func:`analysis.stats.summarise`), and
    ``invalid``, the number of invalid surveys. Columns: :data:`SUMMARY_COLUMNS`."""
    rows: list[dict[str, Any]] = []
    for (topic, step), group in panel.groupby(["topic", "step"], sort=True):
        parties = [p for p in PARTY_ORDER if p != "all" and p in set(group["party"])]
        for party in [*parties, *sorted(set(group["party"]) - set(PARTY_ORDER)), "all"]:
            mine = group if party == "all" else group[group["party"] == party]
            rows.append({"topic": topic, "step": int(step), "party": party,
                         **summarise(mine["value"].to_numpy(float), confidence),
                         "invalid": int(mine["value"].isna().sum())})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def bimodality_coefficient(values: Any) -> float:
    """Sarle's finite-sample bimodality coefficient BC = (g² + 1) / (k + 3(n−1)²/((n−2)(n−3))),
    with g the bias-corrected sample skewness and k the bias-corrected excess kurtosis (SAS's
    G1 and G2). BC > 5/9 (:data:`BIMODAL_THRESHOLD`) suggests a bimodal distribution.
    NaN values are dropped; NaN with fewer than 4 values or no spread."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n < 4 or np.ptp(x) == 0:
        return math.nan
    g = float(sps.skew(x, bias=False))
    k = float(sps.kurtosis(x, fisher=True, bias=False))
    return (g * g + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def opinion_assortativity(graph: nx.Graph, values: Mapping[int, float]) -> float:
    """Newman's numeric assortativity of attitudes: the Pearson correlation of the values at
    the two ends of every edge, each edge counted in both directions. Edges with an endpoint
    whose value is missing or NaN are left out; NaN when no edge is left or the values at the
    edge ends do not vary."""
    ends = np.array([(values.get(u, math.nan), values.get(v, math.nan)) for u, v in graph.edges() if u != v],
                    dtype=float).reshape(-1, 2)
    return _assortativity(ends[:, 0], ends[:, 1])


def _assortativity(xu: np.ndarray, xv: np.ndarray) -> float:
    """:func:`opinion_assortativity` from the values at the two ends of each edge."""
    keep = ~(np.isnan(xu) | np.isnan(xv))
    a = np.concatenate([xu[keep], xv[keep]])
    b = np.concatenate([xv[keep], xu[keep]])
    if len(a) == 0 or np.ptp(a) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def default_attitudes(panel: pd.DataFrame, declared: Mapping[str, float] | None = None) -> dict[str, float]:
    """D per topic: the declared value (society.json's ``default_attitude``) when given, else
    the mean step-0 value of the Default-party agents, else NaN. Every topic of the panel is a key."""
    declared = {str(t): float(v) for t, v in (declared or {}).items() if np.isfinite(v)}
    out: dict[str, float] = {}
    for topic, group in panel.groupby(panel["topic"].astype(str), sort=True):
        before = group[(group["step"] == 0) & (group["party"] == "default")]["value"].dropna()
        out[topic] = declared.get(topic, float(before.mean()) if len(before) else math.nan)
    return out


def society_measures(panel: pd.DataFrame, graph: nx.Graph, defaults: Mapping[str, float]) -> pd.DataFrame:
    """Per (topic, step): ``n`` valid values; ``republican_mean``, ``democrat_mean`` and
    ``polarization`` = democrat mean − republican mean (NaN when a party has no valid value);
    ``bimodality`` (:func:`bimodality_coefficient` of every valid value) and ``bimodal``
    (bimodality > 5/9); ``default_attitude`` D; ``distance_partisans`` = mean |x − D| over the
    partisans' valid values and ``distance_population`` = |population mean − D| (NaN without D);
    ``assortativity`` (:func:`opinion_assortativity` on ``graph``). Columns: :data:`MEASURE_COLUMNS`."""
    rows = []
    edges = np.array([(u, v) for u, v in graph.edges() if u != v], dtype=int).reshape(-1, 2)
    for (topic, step), group in panel.groupby(["topic", "step"], sort=True):
        valid = group.dropna(subset=["value"])
        means = {p: valid.loc[valid["party"] == p, "value"].mean() if (valid["party"] == p).any() else math.nan
                 for p in PARTISAN}
        d = float(defaults.get(str(topic), math.nan))
        partisans = valid.loc[valid["party"].isin(PARTISAN), "value"].to_numpy(float)
        bc = bimodality_coefficient(valid["value"])
        rows.append({
            "topic": topic, "step": int(step), "n": len(valid),
            "republican_mean": float(means["republican"]), "democrat_mean": float(means["democrat"]),
            "polarization": float(means["democrat"] - means["republican"]),
            "bimodality": bc, "bimodal": bool(bc > BIMODAL_THRESHOLD),
            "default_attitude": d,
            "distance_partisans": float(np.abs(partisans - d).mean()) if len(partisans) else math.nan,
            "distance_population": abs(float(valid["value"].mean()) - d) if len(valid) else math.nan,
            "assortativity": _assortativity(*(group.set_index("agent")["value"].reindex(edges[:, k]).to_numpy(float)
                                              for k in (0, 1))),
        })
    return pd.DataFrame(rows, columns=MEASURE_COLUMNS)


def attractor_surveys(panel: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    """The panel as surveys in :mod:`analysis.attractor`'s format, one pseudo-debate per
    encounter: for each member of an encounter at step s (``members``: topic, step, debate_id,
    agent; :meth:`SocietyData.members`), iteration 0 holds its panel value at step s − 1 and
    iteration 1 its value at step s; role = party, agent_index = agent. Columns: debate_id,
    topic, role, agent_index, iteration, value (NaN for an invalid or missing survey)."""
    values = panel.set_index(["topic", "step", "agent"])["value"]
    parties = panel.drop_duplicates("agent").set_index("agent")["party"]
    frames = []
    for iteration, offset in ((0, 1), (1, 0)):
        keys = pd.MultiIndex.from_arrays([members["topic"], members["step"] - offset, members["agent"]])
        frames.append(pd.DataFrame({
            "debate_id": members["debate_id"].astype(str).to_numpy(), "topic": members["topic"].astype(str).to_numpy(),
            "role": members["agent"].map(parties).fillna("unknown").to_numpy(),
            "agent_index": members["agent"].to_numpy(int), "iteration": iteration,
            "value": values.reindex(keys).to_numpy(float)}))
    return pd.concat(frames, ignore_index=True)


def society_attractor(panel: pd.DataFrame, members: pd.DataFrame, defaults: Mapping[str, float], *,
                      seed: int = 0, n_boot: int = 1000, confidence: float = 0.95) -> pd.DataFrame:
    """The attractor fit Δx = a·(D − x) + b·(m − x) + c (:func:`analysis.attractor.fit_attractor`)
    on the society's transitions: each encounter member's move from its step s − 1 to its step s
    panel value, with m the mean of its encounter partners' valid step s − 1 values
    (:func:`attractor_surveys`). D is held fixed at ``defaults`` (:func:`default_attitudes`);
    a topic whose D is NaN gets pull and influence but no drift.

    Clustering: the p-values and bootstrap intervals treat each **encounter** (its debate_id) as
    one cluster. One agent takes part in an encounter at many steps and its panel value at step
    s is both the end of one transition and the start of the next, so transitions of different
    encounters are not independent either; the intervals are optimistic by that much.

    Returns the metric rows (columns of :data:`analysis.metrics.COLUMNS`): attractor_pull,
    attractor_influence, attractor_drift per topic and party, per topic (role ``all``) and,
    with two or more topics with a known D, pooled (topic ``all``)."""
    from ..analysis.attractor import fit_attractor
    from ..analysis.metrics import COLUMNS

    surveys = attractor_surveys(panel, members)
    known = {str(t): float(v) for t, v in defaults.items() if np.isfinite(v)}
    rows = fit_attractor(surveys, known, seed=seed, n_boot=n_boot, confidence=confidence) if len(surveys) else []
    return pd.DataFrame(rows, columns=COLUMNS)
