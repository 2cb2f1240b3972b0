"""Metrics that name the paper's effects, each with a 95 % interval and a one-sentence reading.

The unit of every metric is the **debate**: same-role seats (two Republicans in an echo chamber)
are averaged within their debate first, so n counts debates and seats that talked to each other
are never treated as independent observations.

- ``convergence_to_default``: per partisan role, the share of its initial gap to the Default
  agent's pre-debate attitude D0 (the model's own bias) closed by the last survey:
  1 - (last - D0) / (first - D0). 1 = full convergence, 0 = none, < 0 = moved away.
  D0 comes from this run's Default agent, or from ``reference`` when no Default takes part.
  Interval: percentile bootstrap; debates are resampled together with their own Default
  agent, and a reference run's Default agents are resampled independently.
- ``echo_chamber_index``: in same-party debates, the change in the party's extremity between
  first and last survey, where extremity is the distance from the midpoint (5; 1.5 on Pew's
  4-point scale) measured towards
  the side where the party started. Humans intensify (Hobolt et al., 2023): > 0; the paper's
  anomaly is < 0 (moderation). Crossing the midpoint counts as moderation. t interval, paired t.
- ``change_first_to_last``: mean paired change, t interval, paired t-test and Wilcoxon p-values.
- ``invalid_rate``: share of surveys that could not be parsed (per survey), Wilson interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from .frames import RunData
from .stats import summarise

MIDPOINT = 5.0
SMALL_GAP = 0.5  # points; below this a convergence ratio mostly measures noise
SMALL_N = 10  # debates; below this intervals (a bootstrap above all) are rough
COLUMNS = ["metric", "topic", "role", "estimate", "ci_low", "ci_high", "n", "p_value", "p_wilcoxon", "reference",
           "reading"]
"""A metric row; ``reference`` is the human (or known true) value shown beside the estimate, NaN if none."""
PARTISAN = ("republican", "democrat")


def metric_table(run: RunData, reference: RunData | None = None, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    roster = [a.get("role") if isinstance(a, dict) else a for a in run.config.get("agents", [])]  # seats may be mappings
    same_party = [r for r in PARTISAN if roster.count(r) >= 2]
    for topic, group in run.surveys.groupby("topic", sort=True):
        defaults = _default_starts(group, reference, topic)
        for role in sorted(group["role"].unique()):
            mine = group[group["role"] == role]
            rows.append(change_first_to_last(mine, topic, role))
            rows.append(invalid_rate(mine, topic, role))
            if role in PARTISAN and defaults is not None:
                rng = np.random.default_rng(seed)
                rows.append(convergence_to_default(mine, defaults, topic, role, rng, n_boot))
            if role in same_party:
                rows.append(echo_chamber_index(mine, topic, role, midpoint=run.scale.midpoint))
    return pd.DataFrame(rows, columns=COLUMNS)


def debate_endpoints(surveys: pd.DataFrame) -> pd.DataFrame:
    """Per debate (index): the role's mean value at the first and at the last survey iteration,
    over seats valid at both."""
    first, last = surveys["iteration"].min(), surveys["iteration"].max()
    wide = surveys[surveys["iteration"].isin([first, last])].pivot_table(
        index=["debate_id", "agent_index"], columns="iteration", values="value", aggfunc="first")
    wide = wide.reindex(columns=[first, last]).dropna()
    wide.columns = ["first", "last"]
    return wide.groupby(level="debate_id").mean()


def _default_starts(group: pd.DataFrame, reference: RunData | None, topic: str) -> tuple[pd.Series, bool] | None:
    """The Default agents' pre-debate values per debate, and whether they come from this run."""
    for source, own in ((group, True), (reference.surveys[reference.surveys["topic"] == topic] if reference else None, False)):
        if source is None:
            continue
        before = source[(source["role"] == "default") & (source["iteration"] == 0)]
        values = before.groupby("debate_id")["value"].mean().dropna()
        if len(values):
            return values, own
    return None


def _row(metric: str, topic: str, role: str, summary: dict[str, float], reading: str, **extra: float) -> dict[str, Any]:
    return {"metric": metric, "topic": topic, "role": role, "estimate": summary["mean"],
            "ci_low": summary["ci_low"], "ci_high": summary["ci_high"], "n": summary["n"],
            "p_value": extra.get("p_value", np.nan), "p_wilcoxon": extra.get("p_wilcoxon", np.nan),
            "reference": np.nan, "reading": reading}


def _caveat(n: int) -> str:
    return f" With only {n} debate{'s' if n != 1 else ''}, treat the interval as rough." if 0 < n < SMALL_N else ""


def _no_data(metric: str, topic: str, role: str) -> dict[str, Any]:
    summary = {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0}
    return _row(metric, topic, role, summary, f"No debate has valid {role.title()} surveys at both ends; not computed.")


def _paired_t(diff: np.ndarray) -> float:
    if len(diff) < 2 or np.ptp(diff) < 1e-12:
        return np.nan  # no variance in the differences: the t statistic is undefined
    return float(sps.ttest_1samp(diff, 0.0).pvalue)


def _excludes_zero(summary: dict[str, float]) -> bool:
    return bool(summary["ci_low"] > 0 or summary["ci_high"] < 0)


def change_first_to_last(surveys: pd.DataFrame, topic: str, role: str) -> dict[str, Any]:
    ends = debate_endpoints(surveys)
    if ends.empty:
        return _no_data("change_first_to_last", topic, role)
    diff = (ends["last"] - ends["first"]).to_numpy()
    summary = summarise(diff)
    p_t = _paired_t(diff)
    p_w = float(sps.wilcoxon(diff).pvalue) if len(diff) > 1 and np.any(diff != 0) else np.nan
    verb = ("rose" if summary["mean"] > 0 else "fell") if _excludes_zero(summary) else "showed no clear change"
    reading = (f"{role.title()} agents' attitude {verb} ({summary['mean']:+.2f} points from first to last survey, "
               f"95% CI {summary['ci_low']:+.2f} to {summary['ci_high']:+.2f}; paired t p={p_t:.3g}, "
               f"Wilcoxon p={p_w:.3g}; n={summary['n']} debates).{_caveat(summary['n'])}")
    return _row("change_first_to_last", topic, role, summary, reading, p_value=p_t, p_wilcoxon=p_w)


def convergence_ratio(first: np.ndarray, last: np.ndarray, d0: float) -> float:
    gap = float(np.mean(first)) - d0
    if abs(gap) < 1e-9:
        return np.nan  # no initial gap: nothing to close
    return 1.0 - (float(np.mean(last)) - d0) / gap


def convergence_to_default(surveys: pd.DataFrame, defaults: tuple[pd.Series, bool], topic: str, role: str,
                           rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    ends = debate_endpoints(surveys)
    d_values, own = defaults
    if own:  # keep debates with both, so a resample draws each debate with its own Default agent
        ends = ends.join(d_values.rename("d0"), how="inner")
        d_values = ends["d0"]
    if ends.empty:
        return _no_data("convergence_to_default", topic, role)
    first, last, d = ends["first"].to_numpy(), ends["last"].to_numpy(), d_values.to_numpy()
    d0 = float(d.mean())
    estimate = convergence_ratio(first, last, d0)
    boots = []
    for _ in range(n_boot if len(first) > 1 else 0):
        idx = rng.integers(0, len(first), len(first))
        d_idx = idx if own else rng.integers(0, len(d), len(d))
        boots.append(convergence_ratio(first[idx], last[idx], float(d[d_idx].mean())))
    finite = [b for b in boots if np.isfinite(b)]
    low, high = np.percentile(finite, [2.5, 97.5]) if finite else (np.nan, np.nan)
    summary = {"mean": estimate, "ci_low": float(low), "ci_high": float(high), "n": len(first)}
    reading = (f"{role.title()} agents closed {estimate:.0%} of their initial gap to the Default agent's "
               f"pre-debate attitude ({d0:.2f}) by the last survey (95% bootstrap CI {low:.0%} to {high:.0%}; "
               f"1 = full convergence, 0 = none).{_caveat(len(first))}")
    gap = float(first.mean()) - d0
    if abs(gap) < SMALL_GAP:
        reading += f" The initial gap is only {gap:+.2f} points, so this ratio is unstable."
    return _row("convergence_to_default", topic, role, summary, reading)


def echo_chamber_index(surveys: pd.DataFrame, topic: str, role: str, midpoint: float = MIDPOINT) -> dict[str, Any]:
    """``midpoint``: the scale's middle (5 on 0-10, 1.5 on Pew's 0..3)."""
    ends = debate_endpoints(surveys)
    side = np.sign(ends["first"].mean() - midpoint) if len(ends) else 0.0
    if ends.empty or side == 0:
        return _no_data("echo_chamber_index", topic, role)
    change = (side * (ends["last"] - ends["first"])).to_numpy()  # extremity gained towards the party's side
    summary = summarise(change)
    p_t = _paired_t(change)
    if not _excludes_zero(summary):
        verdict = "no clear intensification or moderation"
    elif summary["mean"] > 0:
        verdict = "they intensified, as humans do in echo chambers"
    else:
        verdict = "they moderated, the opposite of the human echo-chamber effect"
    reading = (f"Among same-party {role.title()} agents, extremity (distance from the midpoint towards the side "
               f"they started on) changed by {summary['mean']:+.2f} (95% CI {summary['ci_low']:+.2f} to "
               f"{summary['ci_high']:+.2f}, p={p_t:.3g}, n={summary['n']} debates): {verdict}.{_caveat(summary['n'])}")
    return _row("echo_chamber_index", topic, role, summary, reading, p_value=p_t)


def invalid_rate(surveys: pd.DataFrame, topic: str, role: str) -> dict[str, Any]:
    n, bad = len(surveys), int(surveys["value"].isna().sum())
    ci = sps.binomtest(bad, n).proportion_ci(method="wilson") if n else None
    summary = {"mean": bad / n if n else np.nan, "ci_low": ci.low if ci else np.nan,
               "ci_high": ci.high if ci else np.nan, "n": n}
    reading = f"{bad} of {n} {role.title()} surveys could not be parsed and were recorded as invalid ({summary['mean']:.1%})."
    return _row("invalid_rate", topic, role, summary, reading)
