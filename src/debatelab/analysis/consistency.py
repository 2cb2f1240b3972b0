"""Survey-behaviour consistency: does what agents say (a stance judge's reading of each reply)
match what they report (their surveys)?

A reply at iteration t by agent i of a debate of n agents is paired with agent i's last survey
before it, at iteration n·floor((t − 1)/n). Per topic and role (and every role pooled, ``all``):
``stance_survey_correlation`` (Pearson r over the pairs, interval by a percentile bootstrap over
debates) and ``stance_survey_gap`` (stance minus survey, averaged within each debate first, then
a t interval over debates). The gap needs both on one scale, so Pew-scale runs get r only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from .metrics import COLUMNS, SMALL_N
from .stats import aggregate, summarise


def pair_stances(stances: pd.DataFrame, surveys: pd.DataFrame) -> pd.DataFrame:
    """Each valid stance with the speaker's last valid survey before the reply."""
    n_agents = surveys.groupby("debate_id")["agent_index"].nunique().rename("n_agents")
    said = stances.dropna(subset=["value"]).join(n_agents, on="debate_id")
    said = said.assign(survey_iteration=(said["n_agents"] * ((said["iteration"] - 1) // said["n_agents"])))
    reported = surveys.dropna(subset=["value"])[["debate_id", "agent_index", "iteration", "value"]]
    reported = reported.rename(columns={"iteration": "survey_iteration", "value": "survey"})
    pairs = said.merge(reported, on=["debate_id", "agent_index", "survey_iteration"], how="inner")
    return pairs.rename(columns={"value": "stance"})[
        ["debate_id", "topic", "role", "agent_index", "iteration", "stance", "survey"]]


def consistency_rows(stances: pd.DataFrame, surveys: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000,
                     gap_comparable: bool = True) -> list[dict[str, Any]]:
    pairs = pair_stances(stances, surveys)
    rows: list[dict[str, Any]] = []
    for topic in sorted(pairs["topic"].astype(str).unique()):
        mine = pairs[pairs["topic"].astype(str) == topic]
        for role in [*sorted(mine["role"].unique()), "all"]:
            group = mine if role == "all" else mine[mine["role"] == role]
            rows.append(_correlation(group, topic, role, np.random.default_rng(seed), n_boot, gap_comparable))
            if gap_comparable:
                rows.append(_gap(group, topic, role))
    return rows


def _r(stance: np.ndarray, survey: np.ndarray) -> float:
    if len(stance) < 3 or np.ptp(stance) == 0 or np.ptp(survey) == 0:
        return np.nan
    return float(np.corrcoef(stance, survey)[0, 1])


def _correlation(pairs: pd.DataFrame, topic: str, role: str, rng: np.random.Generator, n_boot: int,
                 same_scale: bool) -> dict[str, Any]:
    stance, survey = pairs["stance"].to_numpy(float), pairs["survey"].to_numpy(float)
    r = _r(stance, survey)
    groups = [np.flatnonzero(pairs["debate_id"].to_numpy() == d) for d in pd.unique(pairs["debate_id"])]
    boots = []
    for _ in range(n_boot if len(groups) > 1 and np.isfinite(r) else 0):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        boots.append(_r(stance[idx], survey[idx]))
    finite = [b for b in boots if np.isfinite(b)]
    low, high = np.percentile(finite, [2.5, 97.5]) if finite else (np.nan, np.nan)
    p = float(sps.pearsonr(stance, survey).pvalue) if np.isfinite(r) else np.nan
    who = "all agents" if role == "all" else f"{role.title()} agents"
    if not np.isfinite(r):
        reading = f"Not computed for {who}: fewer than 3 pairs, or stances or surveys do not vary."
    else:
        scales = "" if same_scale else " Surveys are on Pew's 4-point scale, stances on 0-10: only r is comparable."
        reading = (f"What {who} said and what they reported correlate at r = {r:.2f} (95% debate-bootstrap CI "
                   f"{low:.2f} to {high:.2f}, {len(pairs)} replies in {len(groups)} debates).{scales}"
                   + _caveat(len(groups)))
    return _row("stance_survey_correlation", topic, role, r, low, high, len(pairs), p, reading)


def _gap(pairs: pd.DataFrame, topic: str, role: str) -> dict[str, Any]:
    per_debate = (pairs["stance"] - pairs["survey"]).groupby(pairs["debate_id"]).mean().to_numpy()
    s = summarise(per_debate)
    p = (float(sps.ttest_1samp(per_debate, 0.0).pvalue) if len(per_debate) > 1 and np.ptp(per_debate) > 0
         else np.nan)
    who = "all agents" if role == "all" else f"{role.title()} agents"
    reading = (f"In their replies {who} stated {abs(s['mean']):.2f} points {'more' if s['mean'] >= 0 else 'less'} "
               f"than their surveys reported (stance minus survey {s['mean']:+.2f}, 95% CI {s['ci_low']:+.2f} to "
               f"{s['ci_high']:+.2f}, n={s['n']} debates).{_caveat(s['n'])}")
    return _row("stance_survey_gap", topic, role, s["mean"], s["ci_low"], s["ci_high"], s["n"], p, reading)


def stance_trajectory(stances: pd.DataFrame, unit: str = "agent") -> pd.DataFrame:
    """Stance mean, sd, se and 95 % interval per topic, role and reply iteration."""
    return aggregate(stances, unit=unit)  # type: ignore[arg-type]


def _caveat(n: int) -> str:
    return f" With only {n} debates, treat the interval as rough." if 0 < n < SMALL_N else ""


def _row(metric: str, topic: str, role: str, estimate: float, low: float, high: float, n: int, p: float,
         reading: str) -> dict[str, Any]:
    row = {"metric": metric, "topic": topic, "role": role, "estimate": estimate, "ci_low": float(low),
           "ci_high": float(high), "n": n, "p_value": p, "p_wilcoxon": np.nan, "reference": np.nan, "reading": reading}
    return {c: row[c] for c in COLUMNS}
