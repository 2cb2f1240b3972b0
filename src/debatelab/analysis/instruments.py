"""Every instrument of a run as one metric table: the paper's metrics (:mod:`.metrics`), the
attractor decomposition (:mod:`.attractor`), survey-behaviour consistency when a stance judge has
scored the run (:mod:`.consistency`), and, on Pew's 4-point scale, the human yardsticks
(:mod:`.yardsticks`). ``report`` renders this table and ``analyze`` writes it as JSON records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..files import write_json
from ..scales import PEW4
from .frames import RunData
from .metrics import COLUMNS, metric_table

RECORD_KEYS = ("metric", "topic", "role", "estimate", "low", "high", "n")
"""The keys every ``analyze`` record has; ``reference``, ``p_value`` and ``reading`` follow them."""


def all_metrics(run: RunData, reference: RunData | None = None, humans: pd.DataFrame | None = None,
                seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """One row per metric, topic and role (:data:`.metrics.COLUMNS`). ``reference``: a run whose
    Default agent gives the model's default attitude where this run has none; ``humans``: human
    answer distributions (:func:`.yardsticks.load_human_distributions`) to score
    representativeness against, beside the shipped Pew figures."""
    from .attractor import fit_attractor

    tables = [metric_table(run, reference=reference, seed=seed, n_boot=n_boot)]
    # D is estimated (this run's Default agents, else the reference's), so every bootstrap
    # resample re-estimates it with its debates: a fixed estimate would narrow the intervals.
    rows: list[dict[str, Any]] = list(fit_attractor(
        run.surveys, reference_surveys=reference.surveys if reference is not None else None, seed=seed, n_boot=n_boot))
    rows += _consistency(run, seed, n_boot)
    rows += _yardsticks(run, humans, seed)
    tables.append(pd.DataFrame(rows, columns=COLUMNS))
    return pd.concat([t for t in tables if not t.empty], ignore_index=True).reindex(columns=COLUMNS)


def _consistency(run: RunData, seed: int, n_boot: int) -> list[dict[str, Any]]:
    from .consistency import consistency_rows

    judges = sorted(run.stances["judge"].dropna().unique()) if not run.stances.empty else []
    rows: list[dict[str, Any]] = []
    for judge in judges:
        mine = run.stances[run.stances["judge"] == judge]
        found = consistency_rows(mine, run.surveys, seed=seed, n_boot=n_boot, gap_comparable=run.scale.top == 10)
        # several judges of one run: each row names its judge, so no two rows share a key
        rows += found if len(judges) == 1 else [{**r, "metric": f"{r['metric']} [{judge}]"} for r in found]
    return rows


def _yardsticks(run: RunData, humans: pd.DataFrame | None, seed: int) -> list[dict[str, Any]]:
    from .yardsticks import pew_distributions, representativeness_rows, very_big_rows

    rows = list(very_big_rows(run.surveys, run.scale))
    if run.scale is PEW4:
        rows += representativeness_rows(run.surveys, run.scale, pew_distributions(), seed=seed)
    if humans is not None:  # the user's distributions: their own metric name, never clashing with Pew's
        rows += [{**r, "metric": f"{r['metric']} [supplied]"}
                 for r in representativeness_rows(run.surveys, run.scale, humans, seed=seed)]
    return rows


def metric_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The table as JSON-ready records: the :data:`RECORD_KEYS` first (``low``/``high`` the 95 %
    interval; NaN is written as null); ``source`` is ``agents``, or ``humans`` for a panel's rows."""
    return [{"metric": r["metric"], "topic": r["topic"], "role": r["role"], "estimate": r["estimate"],
             "low": r["ci_low"], "high": r["ci_high"], "n": r["n"], "reference": r.get("reference", np.nan),
             "p_value": r.get("p_value", np.nan),
             "source": r.get("source") if isinstance(r.get("source"), str) else "agents", "reading": r["reading"]}
            for r in table.to_dict("records")]


def write_records(table: pd.DataFrame, path: Path, run: RunData) -> int:
    """Write the records (with the run's name, scale and measure) to ``path`` atomically."""
    records = metric_records(table)
    payload = {"run": run.name, "run_dir": str(run.run_dir), "scale": run.scale.id, "measure": run.measure,
               "records": records}
    write_json(path, payload)
    return len(records)
