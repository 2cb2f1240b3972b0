"""Attractor decomposition: what pulls an agent's attitude from one survey to the next.

Per topic and role, the update between consecutive surveys of one agent is fitted as
Δx = a·(D − x) + b·(m − x) + c, where x is the agent's survey value, D the model's default
attitude on the topic (the Default agents' mean pre-debate value, from the run or a reference
run), and m the mean of the other agents' values at the same survey. ``a`` is the pull toward the
model's own bias, ``b`` social influence, ``c`` drift (cf. Brockers et al. 2025). Point estimates
and cluster-robust p-values come from statsmodels OLS; intervals from a percentile bootstrap that
resamples whole debates, since one debate's transitions share agents and noise.

Two cautions, stated in readings where they bite. Identification: with D constant, a and b are
told apart only by the variation in m that x does not explain (the other agents' own draws and
noise), so few debates give wide intervals. Errors in variables: on the greedy (rounded) measure
the rounding error of x enters both Δx and the regressors and biases a and b; the expected-score
measure avoids most of it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import statsmodels.api as sm

from .metrics import COLUMNS, SMALL_N

COEFFICIENTS = (("attractor_pull", 1), ("attractor_influence", 2), ("attractor_drift", 0))
MIN_TRANSITIONS = 4


def transitions(surveys: pd.DataFrame) -> pd.DataFrame:
    """One row per agent and pair of consecutive survey iterations of its debate: x, x_next, dx
    and m (the other agents' mean valid value at the earlier survey); rows lacking any are dropped."""
    valid = surveys.dropna(subset=["value"])
    rows = []
    for debate_id, debate in valid.groupby("debate_id", sort=False):
        iterations = sorted(surveys.loc[surveys["debate_id"] == debate_id, "iteration"].unique())
        by_iter = {i: g.set_index("agent_index") for i, g in debate.groupby("iteration")}
        for now, then in zip(iterations, iterations[1:]):
            if now not in by_iter or then not in by_iter:
                continue
            here, later = by_iter[now], by_iter[then]
            total, count = here["value"].sum(), len(here)
            for agent, row in here.iterrows():
                if agent not in later.index or count < 2:
                    continue
                rows.append({"debate_id": debate_id, "topic": row["topic"], "role": row["role"], "agent_index": agent,
                             "iteration": now, "x": row["value"], "x_next": later.at[agent, "value"],
                             "m": (total - row["value"]) / (count - 1)})
    out = pd.DataFrame(rows, columns=["debate_id", "topic", "role", "agent_index", "iteration", "x", "x_next", "m"])
    return out.assign(dx=out["x_next"] - out["x"])


def default_attitudes(surveys: pd.DataFrame, reference_surveys: pd.DataFrame | None = None) -> dict[str, float]:
    """Per topic, the Default agents' mean pre-debate value here, else in the reference run."""
    out: dict[str, float] = {}
    for source in (reference_surveys, surveys):  # this run's own win
        if source is None:
            continue
        before = source[(source["role"] == "default") & (source["iteration"] == 0)].dropna(subset=["value"])
        out.update({str(t): float(v) for t, v in before.groupby("topic")["value"].mean().items()})
    return out


def _design(data: pd.DataFrame, d: pd.Series) -> np.ndarray:
    return np.column_stack([np.ones(len(data)), d - data["x"], data["m"] - data["x"]])


def fit_attractor(surveys: pd.DataFrame, defaults: Mapping[str, float], *, seed: int = 0, n_boot: int = 1000,
                  confidence: float = 0.95) -> list[dict[str, Any]]:
    """Metric rows (``attractor_pull``, ``attractor_influence``, ``attractor_drift``) per topic and
    role, per topic for every role pooled (role ``all``), and pooled over topics (``all``/``all``)."""
    data = transitions(surveys)
    data = data[data["topic"].astype(str).isin(defaults)]
    data = data.assign(d=data["topic"].astype(str).map(defaults))
    rows: list[dict[str, Any]] = []
    for topic in sorted(data["topic"].astype(str).unique()):
        mine = data[data["topic"].astype(str) == topic]
        for role in [*sorted(mine["role"].unique()), "all"]:
            rows += _fit_rows(mine if role == "all" else mine[mine["role"] == role], topic, role,
                              defaults[topic], seed, n_boot, confidence)
    if data["topic"].nunique() > 1:
        rows += _fit_rows(data, "all", "all", float("nan"), seed, n_boot, confidence)
    return rows


def _fit_rows(data: pd.DataFrame, topic: str, role: str, d0: float, seed: int, n_boot: int,
              confidence: float) -> list[dict[str, Any]]:
    design, dx = _design(data, data["d"]), data["dx"].to_numpy(dtype=float)
    debates = data["debate_id"].to_numpy()
    if len(data) < MIN_TRANSITIONS or np.linalg.matrix_rank(design) < 3:
        why = (f"only {len(data)} transitions" if len(data) < MIN_TRANSITIONS
               else "the distances to D and to the others' mean move together, so pull and influence cannot be told apart")
        return [_row(name, topic, role, np.nan, (np.nan, np.nan), len(data), np.nan,
                     f"Not estimated: {why}.") for name, _ in COEFFICIENTS]
    fit = sm.OLS(dx, design).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(debates)[0]})
    low, high = _bootstrap(design, dx, debates, seed, n_boot, confidence)
    n_debates = len(set(debates))
    return [_row(name, topic, role, float(fit.params[k]), (low[k], high[k]), len(data), float(fit.pvalues[k]),
                 _reading(name, role, float(fit.params[k]), low[k], high[k], len(data), n_debates, d0))
            for name, k in COEFFICIENTS]


def _bootstrap(design: np.ndarray, dx: np.ndarray, debates: np.ndarray, seed: int, n_boot: int,
               confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the coefficients over resamples of whole debates (least squares)."""
    groups = [np.flatnonzero(debates == d) for d in pd.unique(debates)]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot if len(groups) > 1 else 0):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if np.linalg.matrix_rank(design[idx]) == 3:
            draws.append(np.linalg.lstsq(design[idx], dx[idx], rcond=None)[0])
    if not draws:
        return np.full(3, np.nan), np.full(3, np.nan)
    tail = 100 * (1 - confidence) / 2
    return np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)


def _row(metric: str, topic: str, role: str, estimate: float, interval: tuple[float, float], n: int,
         p: float, reading: str) -> dict[str, Any]:
    row = {"metric": metric, "topic": topic, "role": role, "estimate": estimate, "ci_low": float(interval[0]),
           "ci_high": float(interval[1]), "n": n, "p_value": p, "p_wilcoxon": np.nan, "reference": np.nan,
           "reading": reading}
    return {c: row[c] for c in COLUMNS}


def _reading(metric: str, role: str, value: float, low: float, high: float, n: int, debates: int, d0: float) -> str:
    who = "All agents" if role == "all" else f"{role.title()} agents"
    target = {"attractor_pull": f"toward the model's default attitude{'' if np.isnan(d0) else f' ({d0:.2f})'}",
              "attractor_influence": "toward the other agents' mean"}.get(metric)
    interval = f"95% debate-bootstrap CI {low:.2f} to {high:.2f}, {n} transitions in {debates} debates"
    caveat = f" With only {debates} debates, treat the interval as rough." if debates < SMALL_N else ""
    if target is None:
        return f"{who} drifted {value:+.2f} points per round beyond both pulls ({interval}).{caveat}"
    return f"{who} moved {value:.2f} of the way {target} each round ({interval}).{caveat}"
