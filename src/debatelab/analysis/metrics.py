"""Metrics that name the paper's effects, each with a 95 % interval and a one-sentence reading.

- ``convergence_to_default``: per partisan role, the share of its initial gap to the Default
  agent's pre-debate attitude (the model's own bias) closed by the last survey:
  1 - (last - D0) / (first - D0). 1 = full convergence, 0 = none, < 0 = moved away.
  D0 comes from this run's Default agent, or from ``reference`` when no Default takes part.
  Interval: percentile bootstrap over debates, with D0 held fixed.
- ``echo_chamber_index``: in same-party debates, the mean change in distance from the scale
  midpoint (5) between first and last survey. Humans intensify (Hobolt et al., 2023): > 0;
  the paper's anomaly is < 0 (moderation). Interval: t over agents; p from a paired t-test.
- ``change_first_to_last``: mean paired change per agent, t interval, paired t-test p-value and
  Wilcoxon signed-rank p-value (``p_wilcoxon``).
- ``invalid_rate``: share of surveys that could not be parsed, Wilson interval.
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
COLUMNS = ["metric", "topic", "role", "estimate", "ci_low", "ci_high", "n", "p_value", "p_wilcoxon", "reading"]
PARTISAN = ("republican", "democrat")


def metric_table(run: RunData, reference: RunData | None = None, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    surveys = run.surveys
    same_party = [r for r in PARTISAN if list(run.config.get("agents", [])).count(r) >= 2]
    for topic, group in surveys.groupby("topic", sort=True):
        d0 = default_level(group, reference, topic)
        for role in sorted(group["role"].unique()):
            mine = group[group["role"] == role]
            rows.append(change_first_to_last(mine, topic, role))
            rows.append(invalid_rate(mine, topic, role))
            if role in PARTISAN and d0 is not None:
                rows.append(convergence_to_default(group, role, d0, topic, np.random.default_rng(seed), n_boot))
            if role in same_party:
                rows.append(echo_chamber_index(mine, topic, role))
    return pd.DataFrame(rows, columns=COLUMNS)


def default_level(group: pd.DataFrame, reference: RunData | None, topic: str) -> float | None:
    """The Default agent's mean attitude before the debate: this run's, else the reference run's."""
    for source in (group, reference.surveys[reference.surveys["topic"] == topic] if reference else None):
        if source is None:
            continue
        before = source[(source["role"] == "default") & (source["iteration"] == 0)]["value"].dropna()
        if len(before):
            return float(before.mean())
    return None


def endpoints(surveys: pd.DataFrame) -> pd.DataFrame:
    """Per agent: value at the first and at the last survey iteration (rows with both valid)."""
    first, last = surveys["iteration"].min(), surveys["iteration"].max()
    wide = surveys[surveys["iteration"].isin([first, last])].pivot_table(
        index=["debate_id", "agent_index"], columns="iteration", values="value", aggfunc="first")
    wide = wide.reindex(columns=[first, last]).dropna()
    wide.columns = ["first", "last"]
    return wide.reset_index()


def _row(metric: str, topic: str, role: str, summary: dict[str, float], reading: str, **extra: float) -> dict[str, Any]:
    return {"metric": metric, "topic": topic, "role": role, "estimate": summary["mean"],
            "ci_low": summary["ci_low"], "ci_high": summary["ci_high"], "n": summary["n"],
            "p_value": extra.get("p_value", np.nan), "p_wilcoxon": extra.get("p_wilcoxon", np.nan),
            "reading": reading}


def change_first_to_last(surveys: pd.DataFrame, topic: str, role: str) -> dict[str, Any]:
    ends = endpoints(surveys)
    diff = (ends["last"] - ends["first"]).to_numpy()
    summary = summarise(diff)
    p_t = _paired_t(ends["last"], ends["first"])
    p_w = float(sps.wilcoxon(diff).pvalue) if len(diff) > 1 and np.any(diff != 0) else np.nan
    direction = "rose" if summary["mean"] > 0 else "fell"
    reading = (f"{role.title()} agents' attitude {direction} by {abs(summary['mean']):.2f} points from first "
               f"to last survey (95% CI {summary['ci_low']:.2f} to {summary['ci_high']:.2f}; paired t p={p_t:.3g}, "
               f"Wilcoxon p={p_w:.3g}; n={summary['n']}).")
    return _row("change_first_to_last", topic, role, summary, reading, p_value=p_t, p_wilcoxon=p_w)


def _paired_t(after: pd.Series, before: pd.Series) -> float:
    diff = np.asarray(after) - np.asarray(before)
    if len(diff) < 2 or np.ptp(diff) < 1e-12:
        return np.nan  # no variance in the differences: the t statistic is undefined
    return float(sps.ttest_rel(after, before).pvalue)


def convergence_ratio(first: np.ndarray, last: np.ndarray, d0: float) -> float:
    gap = float(np.mean(first)) - d0
    if abs(gap) < 1e-9:
        return np.nan  # no initial gap: nothing to close
    return 1.0 - (float(np.mean(last)) - d0) / gap


def convergence_to_default(group: pd.DataFrame, role: str, d0: float, topic: str,
                           rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    # One observation per debate (same-role seats averaged) so the bootstrap resamples debates.
    ends = endpoints(group[group["role"] == role]).groupby("debate_id")[["first", "last"]].mean()
    first, last = ends["first"].to_numpy(), ends["last"].to_numpy()
    estimate = convergence_ratio(first, last, d0)
    boots = [convergence_ratio(first[idx], last[idx], d0)
             for idx in (rng.integers(0, len(first), len(first)) for _ in range(n_boot))] if len(first) > 1 else []
    low, high = (np.nanpercentile(boots, [2.5, 97.5]) if boots and not np.all(np.isnan(boots)) else (np.nan, np.nan))
    summary = {"mean": estimate, "ci_low": float(low), "ci_high": float(high), "n": len(first)}
    gap = float(np.mean(first)) - d0 if len(first) else np.nan
    reading = (f"{role.title()} agents closed {estimate:.0%} of their initial gap to the Default agent's "
               f"pre-debate attitude ({d0:.2f}) by the last survey (95% bootstrap CI {low:.0%} to {high:.0%}; "
               f"1 = full convergence, 0 = none).")
    if abs(gap) < SMALL_GAP:
        reading += f" The initial gap is only {gap:+.2f} points, so this ratio is unstable."
    return _row("convergence_to_default", topic, role, summary, reading)


def echo_chamber_index(surveys: pd.DataFrame, topic: str, role: str) -> dict[str, Any]:
    ends = endpoints(surveys)
    before, after = (ends["first"] - MIDPOINT).abs(), (ends["last"] - MIDPOINT).abs()
    summary = summarise((after - before).to_numpy())
    p_t = _paired_t(after, before)
    verdict = ("they intensified, as humans do in echo chambers" if summary["mean"] > 0
               else "they moderated, the opposite of the human echo-chamber effect")
    reading = (f"Among same-party {role.title()} agents the distance from the scale midpoint changed by "
               f"{summary['mean']:+.2f} (95% CI {summary['ci_low']:+.2f} to {summary['ci_high']:+.2f}, p={p_t:.3g}): "
               f"{verdict}.")
    return _row("echo_chamber_index", topic, role, summary, reading, p_value=p_t)


def invalid_rate(surveys: pd.DataFrame, topic: str, role: str) -> dict[str, Any]:
    n, bad = len(surveys), int(surveys["value"].isna().sum())
    ci = sps.binomtest(bad, n).proportion_ci(method="wilson") if n else None
    summary = {"mean": bad / n if n else np.nan, "ci_low": ci.low if ci else np.nan,
               "ci_high": ci.high if ci else np.nan, "n": n}
    reading = f"{bad} of {n} {role.title()} surveys could not be parsed and were recorded as invalid ({summary['mean']:.1%})."
    return _row("invalid_rate", topic, role, summary, reading)
