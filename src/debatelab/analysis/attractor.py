"""Attractor decomposition: what pulls an agent's attitude from one survey to the next.

Per topic and role, the update between consecutive surveys of one agent is fitted as
Δx = a·(D − x) + b·(m − x) + c, where x is the agent's survey value, D the model's default
attitude on the topic (the Default agents' mean pre-debate value, from the run or a reference
run), and m the mean of the other agents' valid values at the same survey. ``a`` is the pull
toward the model's own bias, ``b`` social influence, ``c`` drift (cf. Brockers et al. 2025).
Point estimates and cluster-robust p-values (debates as clusters, t with G − 1 degrees of
freedom) come from statsmodels OLS; intervals from a percentile bootstrap that resamples whole
debates, because one debate's transitions share agents and noise and are not independent.

What the fit can and cannot tell apart:

- **D and drift.** Within one topic D is a constant, so a·D folds into the intercept: a and b
  do not depend on D at all, only c does. A topic without a known D (no Default agent here or
  in a reference run) still gets a and b; its drift is not estimated. Pooled over topics, D
  varies by topic and the fit needs every topic's D.
- **Pull against influence.** With D constant, a is told apart from b only by the variation of
  m that x does not explain (the other agents' own draws and noise). When D − x and m − x move
  almost together (r² > 0.9) the reading says so; such a fit has wide intervals.
- **Errors in variables.** On the greedy (rounded) measure the rounding error of x enters both
  Δx and the regressors (an error in x shows up as a spurious step back), which biases a and b:
  in simulations with update noise sd 0.3, rounding to integers raised a by 0.02-0.03 and, in
  same-party debates where m − x is small, nearly doubled b. The expected-score measure avoids
  most of it.
- **Uncertainty of D.** Without ``defaults`` D is estimated, and re-estimated in each bootstrap
  resample; holding an estimated D fixed instead made 95 % intervals cover the true pull only
  about 70 % of the time in simulations with a = 0.4.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

from ..errors import DebatelabError
from .metrics import COLUMNS, SMALL_N

COEFFICIENTS = (("attractor_pull", 1), ("attractor_influence", 2), ("attractor_drift", 0))
"""Metric name and its column in the design ``[1, D − x, m − x]``."""
MIN_TRANSITIONS = 4
MAX_CONDITION = 1e8  # beyond this the design is singular in all but rounding
COLLINEAR_R2 = 0.9  # variance inflation 10: the usual point where two regressors blur
WIDE = 0.2  # an interval wider than this cannot pin a share of the distance per round to ±0.1
TRANSITION_COLUMNS = ["debate_id", "topic", "role", "agent_index", "iteration", "x", "x_next", "dx", "m"]
SURVEY_COLUMNS = ("debate_id", "topic", "role", "agent_index", "iteration", "value")


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DebatelabError(f"{what} lack column(s) {', '.join(missing)}")


def transitions(surveys: pd.DataFrame) -> pd.DataFrame:
    """One row per agent and pair of consecutive survey iterations of its debate (the sorted
    distinct iterations at which that debate surveyed, so any n): x, x_next, dx = x_next − x and
    m, the mean of the other agents' valid values at the earlier survey. A transition needs a
    valid x, a valid x_next and at least one other valid value; the rest are left out."""
    require_columns(surveys, SURVEY_COLUMNS, "surveys")
    valid = surveys.dropna(subset=["value"])[list(SURVEY_COLUMNS)]
    if valid.duplicated(["debate_id", "agent_index", "iteration"]).any():
        raise DebatelabError("surveys have more than one valid value for one agent at one iteration")
    schedule = surveys[["debate_id", "iteration"]].drop_duplicates().sort_values(["debate_id", "iteration"])
    schedule = schedule.assign(next_iteration=schedule.groupby("debate_id")["iteration"].shift(-1)).dropna()
    schedule["next_iteration"] = schedule["next_iteration"].astype(surveys["iteration"].dtype)
    totals = valid.groupby(["debate_id", "iteration"])["value"].agg(total="sum", count="count")
    now = valid.merge(schedule, on=["debate_id", "iteration"]).join(totals, on=["debate_id", "iteration"])
    now = now[now["count"] >= 2]
    later = valid[["debate_id", "agent_index", "iteration", "value"]].rename(
        columns={"iteration": "next_iteration", "value": "x_next"})
    out = now.merge(later, on=["debate_id", "agent_index", "next_iteration"]).rename(columns={"value": "x"})
    out = out.assign(dx=out["x_next"] - out["x"], m=(out["total"] - out["x"]) / (out["count"] - 1))
    return out.sort_values(["debate_id", "iteration", "agent_index"], ignore_index=True)[TRANSITION_COLUMNS]


def _per_debate_defaults(surveys: pd.DataFrame | None) -> pd.Series:
    """The Default agents' mean pre-debate (iteration 0) value per (topic, debate_id)."""
    if surveys is None:
        return pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=["topic", "debate_id"]))
    before = surveys[(surveys["role"] == "default") & (surveys["iteration"] == 0)].dropna(subset=["value"])
    return before.groupby([before["topic"].astype(str).rename("topic"), "debate_id"])["value"].mean()


def default_attitudes(surveys: pd.DataFrame, reference_surveys: pd.DataFrame | None = None) -> dict[str, float]:
    """Per topic, the model's default attitude D: the mean pre-debate (iteration 0) value of this
    run's role ``default`` agents (averaged within each debate first, as the convergence metric
    does), else of the reference run's. Topics with neither are absent."""
    out: dict[str, float] = {}
    for source in (reference_surveys, surveys):  # this run's own win
        per_debate = _per_debate_defaults(source)
        out.update({str(t): float(v) for t, v in per_debate.groupby(level="topic").mean().items()})
    return out


@dataclass(frozen=True)
class Anchors:
    """D per topic, and what a bootstrap resample redraws it from: this run's per-debate Default
    values (``own``, by debate_id), which travel with their debates, and a reference run's
    (``reference``, per topic), which are resampled on their own. Fixed D has neither."""

    point: dict[str, float]
    own: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    reference: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def estimated(cls, surveys: pd.DataFrame, reference_surveys: pd.DataFrame | None) -> Anchors:
        own, ref = _per_debate_defaults(surveys), _per_debate_defaults(reference_surveys)
        mine = set(own.index.get_level_values("topic"))
        borrowed = {str(t): g.to_numpy(float) for t, g in ref.groupby(level="topic") if t not in mine}
        return cls(default_attitudes(surveys, reference_surveys), own.droplevel("topic"), borrowed)


def _design(data: pd.DataFrame, d: pd.Series | float) -> np.ndarray:
    """The regressors ``[1, D − x, m − x]``, in the order of :data:`COEFFICIENTS`' columns."""
    x = data["x"].to_numpy(float)
    return np.column_stack([np.ones(len(data)), np.asarray(d, dtype=float) - x, data["m"].to_numpy(float) - x])


def fit_attractor(surveys: pd.DataFrame, defaults: Mapping[str, float] | None = None, *,
                  reference_surveys: pd.DataFrame | None = None, seed: int = 0, n_boot: int = 1000,
                  confidence: float = 0.95) -> list[dict[str, Any]]:
    """Metric rows ``attractor_pull`` (a), ``attractor_influence`` (b), ``attractor_drift`` (c)
    per topic and role, per topic for every role pooled (role ``all``), and, when two or more
    topics have a default attitude, pooled over those topics (topic ``all``, role ``all``).
    ``n`` counts transitions. Topics without any transition give no rows; degenerate fits give
    NaN rows whose reading says why.

    ``defaults``: D per topic, held fixed (known, or assumed). Without it D is estimated as
    :func:`default_attitudes` of ``surveys`` (else ``reference_surveys``) and estimated again in
    every bootstrap resample, so the intervals carry D's own sampling error (the p-values, from
    statsmodels, treat D as known)."""
    if defaults is not None and reference_surveys is not None:
        raise DebatelabError("fit_attractor takes defaults or reference_surveys, not both")
    anchors = (Anchors.estimated(surveys, reference_surveys) if defaults is None
               else Anchors({str(t): float(v) for t, v in defaults.items() if np.isfinite(v)}))
    data = transitions(surveys)
    data = data.assign(topic=data["topic"].astype(str), role=data["role"].astype(str))
    data = data.assign(d=data["topic"].map(anchors.point).astype(float))
    rows: list[dict[str, Any]] = []
    settings = (anchors, seed, n_boot, confidence)
    for topic in sorted(data["topic"].unique()):
        mine = data[data["topic"] == topic]
        for role in [*sorted(mine["role"].unique()), "all"]:
            rows += fit_rows(mine if role == "all" else mine[mine["role"] == role], topic, role, *settings)
    anchored = data[data["d"].notna()]
    if anchored["topic"].nunique() > 1:
        rows += fit_rows(anchored, "all", "all", *settings)
    return rows


def _degenerate(design: np.ndarray) -> str | None:
    """Why the design cannot be fitted, or None."""
    if len(design) < MIN_TRANSITIONS:
        return f"only {len(design)} transition{'' if len(design) == 1 else 's'} (at least {MIN_TRANSITIONS} are needed)"
    if np.linalg.matrix_rank(design) < 3 or np.linalg.cond(design) > MAX_CONDITION:
        return ("the distances to the default attitude and to the other agents' mean do not vary independently "
                "(the design is singular), so pull, influence and drift cannot be told apart")
    return None


def _ols(dx: np.ndarray, design: np.ndarray, debates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and their debate-clustered p-values (NaN p with a single debate)."""
    groups = pd.factorize(debates)[0]
    with warnings.catch_warnings():  # few clusters make statsmodels warn; the reading carries the caveat
        warnings.simplefilter("ignore")
        if groups.max() < 1:
            return sm.OLS(dx, design).fit().params, np.full(3, np.nan)
        fit = sm.OLS(dx, design).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    return np.asarray(fit.params), np.asarray(fit.pvalues)


def fit_rows(data: pd.DataFrame, topic: str, role: str, anchors: Anchors, seed: int, n_boot: int,
              confidence: float) -> list[dict[str, Any]]:
    """The three rows of one fit (``topic`` ``all``: pooled over topics, each with its own D)."""
    pooled = topic == "all" and data["topic"].nunique() > 1
    d0 = np.nan if pooled else anchors.point.get(topic, np.nan)
    known_d = pooled or bool(np.isfinite(d0))
    # within a topic an unknown D only shifts the intercept, so 0 stands in and drift is dropped
    design = _design(data, data["d"].fillna(0.0))
    dx, debates = data["dx"].to_numpy(float), data["debate_id"].to_numpy()
    n, n_debates = len(data), len(pd.unique(debates))
    why = _degenerate(design)
    if why:
        return [_row(name, topic, role, np.nan, (np.nan, np.nan), n, np.nan, f"Not estimated: {why}.")
                for name, _ in COEFFICIENTS]
    params, pvalues = _ols(dx, design, debates)
    low, high, kept = _bootstrap(data, anchors, seed, n_boot, confidence)
    notes = _caveats(design, n_debates, kept, n_boot)
    rows = []
    for name, k in COEFFICIENTS:
        if name == "attractor_drift" and not known_d:
            rows.append(_row(name, topic, role, np.nan, (np.nan, np.nan), n, np.nan,
                             "Not estimated: the model's default attitude on this topic is unknown (no Default agent "
                             "in this run or a reference run), so drift cannot be told apart from the pull."))
            continue
        anchor = d0 if known_d else (params[0] / params[1] if params[1] > 0 else np.nan)
        text = _reading(name, _who(role, pooled), params[k], (low[k], high[k]), pvalues[k], anchor, known_d,
                        f"{confidence:.0%} debate-bootstrap CI", f"{n} transitions in {n_debates} debates")
        blur = "" if name == "attractor_drift" else _blur(design, high[k] - low[k])
        rows.append(_row(name, topic, role, float(params[k]), (low[k], high[k]), n, float(pvalues[k]),
                         text + blur + notes))
    return rows


def _draws(clusters: np.ndarray, rng: np.random.Generator, n_boot: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per resample: the clusters drawn (codes of ``pd.factorize``) and their rows."""
    codes, uniques = pd.factorize(clusters)
    order = np.argsort(codes, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1])
    for _ in range(n_boot):
        draw = rng.integers(0, len(groups), len(groups))
        yield draw, np.concatenate([groups[i] for i in draw])


def cluster_resamples(clusters: np.ndarray, rng: np.random.Generator, n_boot: int) -> Iterator[np.ndarray]:
    """Row indices of ``n_boot`` bootstrap samples that each draw as many whole clusters
    (debates), with replacement, as there are: a cluster's rows always travel together."""
    for _, rows in _draws(clusters, rng, n_boot):
        yield rows


def _d_sampler(data: pd.DataFrame, anchors: Anchors,
               rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function of (clusters drawn, rows drawn) giving those rows' D, estimated again from the
    drawn debates' own Default agents and from a fresh resample of a reference run's."""
    codes, clusters = pd.factorize(data["debate_id"])
    row_topic, topics = pd.factorize(data["topic"])
    cluster_topic = np.zeros(len(clusters), dtype=int)
    cluster_topic[codes] = row_topic
    cluster_d = anchors.own.reindex(clusters).to_numpy(float) if len(anchors.own) else np.full(len(clusters), np.nan)
    point = np.array([anchors.point.get(t, 0.0) for t in topics])  # 0: the intercept absorbs an unknown D
    borrowed = [(k, anchors.reference[t]) for k, t in enumerate(topics) if len(anchors.reference.get(t, ()))]

    def draw_d(draw: np.ndarray, rows: np.ndarray) -> np.ndarray:
        found = np.isfinite(cluster_d[draw])
        sums = np.bincount(cluster_topic[draw], np.where(found, cluster_d[draw], 0.0), len(topics))
        counts = np.bincount(cluster_topic[draw], found.astype(float), len(topics))
        d = np.where(counts > 0, sums / np.maximum(counts, 1.0), point)
        for k, values in borrowed:
            d[k] = values[rng.integers(0, len(values), len(values))].mean()
        return d[row_topic[rows]]

    return draw_d


def _bootstrap(data: pd.DataFrame, anchors: Anchors, seed: int, n_boot: int,
               confidence: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Percentile interval of the coefficients over resamples of whole debates (least squares,
    D redrawn with them), and how many resamples could be fitted (a singular one is skipped)."""
    rng = np.random.default_rng(seed)
    x, m, dx = (data[c].to_numpy(float) for c in ("x", "m", "dx"))
    debates = data["debate_id"].to_numpy()
    draw_d = _d_sampler(data, anchors, rng)
    solutions = []
    for draw, rows in _draws(debates, rng, n_boot if len(pd.unique(debates)) > 1 else 0):
        design = np.column_stack([np.ones(len(rows)), draw_d(draw, rows) - x[rows], m[rows] - x[rows]])
        solution, _, rank, _ = np.linalg.lstsq(design, dx[rows], rcond=None)
        if rank == 3:
            solutions.append(solution)
    if not solutions:
        return np.full(3, np.nan), np.full(3, np.nan), 0
    tail = 100 * (1 - confidence) / 2
    return np.percentile(solutions, tail, axis=0), np.percentile(solutions, 100 - tail, axis=0), len(solutions)


def _caveats(design: np.ndarray, n_debates: int, kept: int, n_boot: int) -> str:
    notes = ""
    if n_debates < 2:
        notes += " A single debate: no interval."
    elif n_debates < SMALL_N:
        notes += f" With only {n_debates} debates, treat the interval as rough."
    if n_debates > 1 and kept < 0.95 * n_boot:
        notes += f" Only {kept} of {n_boot} resamples could be fitted, so the interval is unreliable."
    return notes


def _blur(design: np.ndarray, width: float) -> str:
    """Why a pull or influence interval is wide, when the two regressors move together."""
    r = np.corrcoef(design[:, 1], design[:, 2])[0, 1]
    if r * r <= COLLINEAR_R2 or not width > WIDE:
        return ""
    return (f" The distances to the default attitude and to the others' mean move together here (r = {r:.2f}), "
            "so pull and influence are hard to tell apart.")


def _who(role: str, pooled: bool) -> str:
    who = "All agents" if role == "all" else f"{role.title()} agents"
    return f"{who}, pooled over topics," if pooled else who


def _reading(metric: str, who: str, value: float, interval: tuple[float, float], p: float, anchor: float,
             known_d: bool, ci: str, n: str) -> str:
    low, high = interval
    detail = f"{ci} {low:.2f} to {high:.2f}, cluster-robust p={p:.3g}, {n}"
    unclear = low <= 0 <= high
    if metric == "attractor_drift":
        settles = "" if unclear or not np.isfinite(low) else (
            " So they settle away from the model's default attitude, not at it.")
        shown = round(value, 2) + 0.0  # no "-0.00"
        return f"{who} drifted {shown:+.2f} points per round beyond both pulls ({detail}).{settles}"
    if metric == "attractor_influence":
        target = "the other agents' mean"
    elif known_d:
        target = "the model's default attitude" + (f" ({anchor:.2f})" if np.isfinite(anchor) else " (each topic's own)")
    else:
        where = f" near {anchor:.2f}" if np.isfinite(anchor) else ""
        target = (f"a fixed attitude{where} (the model's default attitude is unknown here, so this pull is not "
                  "tied to it)")
    what = "social influence" if metric == "attractor_influence" else "pull"
    none = f" The interval includes 0: no clear {what} either way." if unclear else ""
    if value < 0 and high < 0:
        return f"{who} moved away from {target} by {-value:.2f} of the distance each round ({detail})."
    return f"{who} moved {value:.2f} of the way toward {target} each round ({detail}).{none}"


def _row(metric: str, topic: str, role: str, estimate: float, interval: tuple[float, float], n: int,
         p: float, reading: str) -> dict[str, Any]:
    row = {"metric": metric, "topic": topic, "role": role, "estimate": float(estimate),
           "ci_low": float(interval[0]), "ci_high": float(interval[1]), "n": int(n), "p_value": float(p),
           "p_wilcoxon": np.nan, "reference": np.nan, "reading": reading}
    return {c: row[c] for c in COLUMNS}
