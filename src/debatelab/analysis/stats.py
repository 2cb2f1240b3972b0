"""Aggregation per (topic, role, iteration): n, mean, sample sd, standard error, 95 % t interval.

Repeated roles (two Republicans in one debate) are handled by ``unit``:
- ``"agent"`` (default): every agent is one observation, so a Republican/Republican debate adds
  two Republican observations per survey (n counts agents);
- ``"debate"``: same-role agents are first averaged within each debate, so n counts debates and
  the two seats are not treated as independent.
Invalid surveys (NaN ``value``) are left out of n; ``invalid`` counts invalid surveys (not units)
and ``unit`` names the unit n counts.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

Unit = Literal["agent", "debate"]


def observations(surveys: pd.DataFrame, unit: Unit = "agent") -> pd.DataFrame:
    """One row per observation with columns topic, role, iteration, debate_id, value."""
    if unit == "agent":
        return surveys[["topic", "role", "iteration", "debate_id", "agent_index", "value"]]
    if unit == "debate":
        return (surveys.groupby(["topic", "role", "iteration", "debate_id"], as_index=False)["value"]
                .mean())
    raise ValueError(f"unit must be 'agent' or 'debate', not {unit!r}")


def summarise(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """n, mean, sd (ddof=1), se = sd/sqrt(n), and a two-sided t confidence interval."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    mean = float(x.mean()) if n else np.nan
    sd = float(x.std(ddof=1)) if n > 1 else np.nan
    se = sd / np.sqrt(n) if n > 1 else np.nan
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * se) if n > 1 else np.nan
    return {"n": n, "mean": mean, "sd": sd, "se": se, "ci_low": mean - half, "ci_high": mean + half}


def aggregate(surveys: pd.DataFrame, by: Sequence[str] = ("topic", "role", "iteration"),
              unit: Unit = "agent", confidence: float = 0.95) -> pd.DataFrame:
    obs = observations(surveys, unit)
    invalid = surveys["value"].isna().groupby([surveys[c] for c in by]).sum()
    rows = []
    for key, group in obs.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **summarise(group["value"], confidence),
                     "invalid": int(invalid.get(key if len(key) > 1 else key[0], 0)), "unit": unit})
    columns = [*by, "n", "mean", "sd", "se", "ci_low", "ci_high", "invalid", "unit"]
    return pd.DataFrame(rows, columns=columns)
