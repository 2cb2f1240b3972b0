"""Survey-behaviour consistency: does what agents say (a stance judge's reading of each reply)
match what they report (their surveys)?

A reply at iteration t by agent i of a debate of n agents is paired with agent i's last survey
before it, at iteration n·floor((t − 1)/n); n is the number of distinct agents in that debate's
surveys. Per topic and role (and every role pooled, ``all``):

- ``stance_survey_correlation``: Pearson r over the pairs (n counts replies), interval by a
  percentile bootstrap over whole debates (one debate's replies share agents), p from
  ``scipy.stats.pearsonr`` (which treats replies as independent, so it is optimistic). Pooled
  over roles, r also rewards the roles' distance from each other, not only each agent's
  faithfulness; the per-role rows are the stricter test.
- ``stance_survey_gap``: stance minus survey, averaged within each debate first so that n counts
  debates, then a t interval and a t-test over debates. It needs both on one scale: stances are
  always 0-10, so runs surveyed on another scale (Pew's 4-point item) get r only.

Invalid stances or surveys (NaN ``value``) are left out of the pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import DebatelabError
from .attractor import cluster_resamples, require_columns
from .metrics import COLUMNS, SMALL_N
from .stats import Unit, aggregate, summarise

STANCE_COLUMNS = ("debate_id", "topic", "role", "agent_index", "iteration", "value")
PAIR_COLUMNS = ["debate_id", "topic", "role", "agent_index", "iteration", "stance", "survey"]
MIN_PAIRS = 3


def pair_stances(stances: pd.DataFrame, surveys: pd.DataFrame) -> pd.DataFrame:
    """Each valid stance with the speaker's last survey before the reply, where that survey is
    valid; stances of debates without surveys are left out."""
    require_columns(stances, STANCE_COLUMNS, "stances")
    require_columns(surveys, ("debate_id", "agent_index", "iteration", "value"), "surveys")
    n_agents = surveys.groupby("debate_id", as_index=False)["agent_index"].nunique()
    said = stances.dropna(subset=["value"]).merge(n_agents.rename(columns={"agent_index": "n_agents"}),
                                                  on="debate_id")
    said = said.assign(survey_iteration=(said["n_agents"] * ((said["iteration"] - 1) // said["n_agents"]))
                       .astype(surveys["iteration"].dtype))
    reported = surveys.dropna(subset=["value"])[["debate_id", "agent_index", "iteration", "value"]]
    reported = reported.rename(columns={"iteration": "survey_iteration", "value": "survey"})
    if reported.duplicated(["debate_id", "agent_index", "survey_iteration"]).any():
        raise DebatelabError("surveys have more than one valid value for one agent at one iteration")
    pairs = said.merge(reported, on=["debate_id", "agent_index", "survey_iteration"], how="inner")
    return pairs.rename(columns={"value": "stance"})[PAIR_COLUMNS].reset_index(drop=True)


def _one_judge(stances: pd.DataFrame) -> None:
    judges = stances["judge"].dropna().unique() if "judge" in stances.columns else []
    if len(judges) > 1:
        raise DebatelabError(f"stances come from {len(judges)} judges ({', '.join(map(str, sorted(judges)))}); "
                             "pass one judge's stances at a time")


def consistency_rows(stances: pd.DataFrame, surveys: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000,
                     gap_comparable: bool = True) -> list[dict[str, Any]]:
    """Metric rows per topic and role (and role ``all``): ``stance_survey_correlation`` and, when
    ``gap_comparable`` (surveys on the stances' 0-10 scale), ``stance_survey_gap``."""
    _one_judge(stances)
    pairs = pair_stances(stances, surveys)
    pairs = pairs.assign(topic=pairs["topic"].astype(str), role=pairs["role"].astype(str))
    rows: list[dict[str, Any]] = []
    for topic in sorted(pairs["topic"].unique()):
        mine = pairs[pairs["topic"] == topic]
        for role in [*sorted(mine["role"].unique()), "all"]:
            group = mine if role == "all" else mine[mine["role"] == role]
            rows.append(_correlation(group, topic, role, np.random.default_rng(seed), n_boot, gap_comparable))
            if gap_comparable:
                rows.append(_gap(group, topic, role))
    return rows


def pearson_r(stance: np.ndarray, survey: np.ndarray) -> float:
    """Pearson r, NaN where it is undefined (too few pairs, or either side constant)."""
    if len(stance) < MIN_PAIRS or np.ptp(stance) < 1e-12 or np.ptp(survey) < 1e-12:
        return np.nan
    return float(np.corrcoef(stance, survey)[0, 1])


def _agreement(r: float) -> str:
    if r >= 0.9:
        return "matched"
    if r >= 0.5:
        return "partly matched"
    return "barely matched" if r >= 0.2 else "did not match"


def _correlation(pairs: pd.DataFrame, topic: str, role: str, rng: np.random.Generator, n_boot: int,
                 same_scale: bool) -> dict[str, Any]:
    stance, survey = pairs["stance"].to_numpy(float), pairs["survey"].to_numpy(float)
    debates = pairs["debate_id"].to_numpy()
    n_debates = len(pd.unique(debates))
    r = pearson_r(stance, survey)
    who = "all agents" if role == "all" else f"{role.title()} agents"
    if not np.isfinite(r):
        reading = (f"Not computed for {who}: fewer than {MIN_PAIRS} paired replies ({len(pairs)}), or the stances "
                   "or the surveys do not vary, so a correlation is undefined.")
        return _row("stance_survey_correlation", topic, role, np.nan, np.nan, np.nan, len(pairs), np.nan, reading)
    boots = [pearson_r(stance[idx], survey[idx]) for idx in cluster_resamples(debates, rng, n_boot if n_debates > 1 else 0)]
    finite = [b for b in boots if np.isfinite(b)]
    low, high = np.percentile(finite, [2.5, 97.5]) if finite else (np.nan, np.nan)
    p = float(sps.pearsonr(stance, survey).pvalue)
    scales = ("" if same_scale else " The surveys are on another scale than the 0-10 stances, so only the "
              "correlation is compared, not the levels.")
    reading = (f"What {who} said {_agreement(r)} what they reported: r = {r:.2f} (95% debate-bootstrap CI "
               f"{low:.2f} to {high:.2f}, p={p:.3g}, {len(pairs)} replies in {n_debates} debates).{scales}"
               + _caveat(n_debates))
    return _row("stance_survey_correlation", topic, role, r, low, high, len(pairs), p, reading)


def _gap(pairs: pd.DataFrame, topic: str, role: str) -> dict[str, Any]:
    per_debate = (pairs["stance"] - pairs["survey"]).groupby(pairs["debate_id"]).mean().to_numpy(float)
    s = summarise(per_debate)
    p = (float(sps.ttest_1samp(per_debate, 0.0).pvalue) if len(per_debate) > 1 and np.ptp(per_debate) > 1e-12
         else np.nan)
    who = "all agents" if role == "all" else f"{role.title()} agents"
    said = ("the same as" if abs(s["mean"]) < 0.005
            else f"{abs(s['mean']):.2f} points {'more' if s['mean'] > 0 else 'less'} than")
    reading = (f"In their replies {who} said {said} their surveys reported (stance minus survey "
               f"{s['mean']:+.2f}, 95% CI {s['ci_low']:+.2f} to {s['ci_high']:+.2f}, p={p:.3g}, "
               f"n={s['n']} debates).{_caveat(s['n'])}")
    return _row("stance_survey_gap", topic, role, s["mean"], s["ci_low"], s["ci_high"], s["n"], p, reading)


def stance_trajectory(stances: pd.DataFrame, unit: Unit = "agent") -> pd.DataFrame:
    """Stance n, mean, sd, se and 95 % t interval per topic, role and reply iteration, as
    :func:`.stats.aggregate` gives for surveys (``unit``: ``agent`` counts replies, ``debate``
    averages same-role replies of a debate first). A reply iteration has one speaker, so each
    role appears at its own seats' iterations only."""
    require_columns(stances, STANCE_COLUMNS, "stances")
    _one_judge(stances)
    return aggregate(stances, unit=unit)


def _caveat(n: int) -> str:
    return f" With only {n} debates, treat the interval as rough." if 0 < n < SMALL_N else ""


def _row(metric: str, topic: str, role: str, estimate: float, low: float, high: float, n: int, p: float,
         reading: str) -> dict[str, Any]:
    row = {"metric": metric, "topic": topic, "role": role, "estimate": float(estimate), "ci_low": float(low),
           "ci_high": float(high), "n": int(n), "p_value": float(p), "p_wilcoxon": np.nan, "reference": np.nan,
           "reading": reading}
    return {c: row[c] for c in COLUMNS}
