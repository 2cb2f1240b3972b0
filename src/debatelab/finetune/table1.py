"""The paper's Table 1 from a study's benchmark scores and debate runs.

One row per model: the base, every (method, r) the study trained, averaged over its seeds, and
any comparison model (benchmarks only); a ``party: both`` study has a ``party`` column and one
row per party, method and rank (that party's adapters). Each value column is a mean with its spread: the sample
standard deviation over seeds (empty with one seed). Which metric a column holds is in its name
and in the Markdown table's header: HellaSwag is lm-eval's ``acc_norm`` (the length-normalised
accuracy that the harness reports for HellaSwag), MMLU its ``acc``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .benchmarks import TABLE_METRICS

TASK_ORDER = ("hellaswag", "mmlu")  # the paper's column order
LABELS = {"hellaswag": "HellaSwag", "mmlu": "MMLU"}
METHOD_ORDER = {"base": 0, "SFT": 1, "SFT+DPO": 2, "reference": 3}


@dataclass(frozen=True)
class TableRow:
    """One Table 1 row: what it is and the names of the models (seeds) it averages."""

    model: str
    method: str  # base | SFT | SFT+DPO | reference
    r: int | None
    members: tuple[str, ...]  # keys of the scores and attitudes: "base", "sft-r16-seed0", ...
    party: str | None = None  # whose adapters, in a two-party study


def attitude_column(topic: str) -> str:
    return f"default_final_{topic}"


def metric_column(task: str) -> str:
    return f"{task}_{TABLE_METRICS[task]}"


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN where there are too few)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else math.nan)


def _score(scores: Mapping[str, Any], name: str, task: str) -> float | None:
    value = (scores.get(name) or {}).get(task, {}).get(TABLE_METRICS[task])
    return None if value is None else float(value)


def table_rows(rows: Sequence[TableRow], scores: Mapping[str, Any], attitudes: Mapping[str, float],
               topic: str) -> list[dict[str, Any]]:
    """Table 1 as records: for each row, every metric's mean and sd over the row's members."""
    records = []
    by_party = any(row.party for row in rows)
    for row in sorted(rows, key=lambda r: (METHOD_ORDER.get(r.method, 9), r.r or 0)):
        record: dict[str, Any] = {"model": row.model, "method": row.method, **({"party": row.party} if by_party else {}),
                                  "r": row.r, "seeds": len(row.members)}
        for task in TASK_ORDER:
            column = metric_column(task)
            record[f"{column}_mean"], record[f"{column}_sd"] = mean_sd([_score(scores, m, task) for m in row.members])
        column = attitude_column(topic)
        values = [attitudes[m] for m in row.members if m in attitudes]
        record[f"{column}_mean"], record[f"{column}_sd"] = mean_sd(values)
        records.append(record)
    return records


def write_table(records: list[dict[str, Any]], topic: str, out: Path) -> Path:
    """``table1.csv`` (fractions, one mean and one sd column per metric) and ``table1.md`` (the
    paper's layout: percentages, mean ± sd); returns the CSV path."""
    import pandas as pd

    from ..files import atomic_open

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(records).astype({"r": "Int64"})  # 16, not 16.0, beside the base row's empty r
    with atomic_open(out / "table1.csv", newline="") as fh:
        frame.to_csv(fh, index=False)
    with atomic_open(out / "table1.md") as fh:
        fh.write(markdown(records, topic))
    return out / "table1.csv"


def _cell(mean: float, sd: float, scale: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {sd * scale:.{digits}f}" if math.isfinite(sd) else "")


def markdown(records: list[dict[str, Any]], topic: str) -> str:
    """Table 1 in Markdown, with the metric of every column in its header."""
    heads = [f"{LABELS[t]} {TABLE_METRICS[t]} (%)" for t in TASK_ORDER] + [f"Default final attitude, {topic} (0-10)"]
    by_party = any("party" in rec for rec in records)
    keys = ["model", "method", *(["party"] if by_party else []), "r", "seeds"]
    lines = ["| " + " | ".join(keys) + " | " + " | ".join(heads) + " |", "|---" * (len(keys) + len(heads)) + "|"]
    for rec in records:
        cells = [_cell(rec[f"{metric_column(t)}_mean"], rec[f"{metric_column(t)}_sd"], 100, 1) for t in TASK_ORDER]
        column = attitude_column(topic)
        cells.append(_cell(rec[f"{column}_mean"], rec[f"{column}_sd"], 1, 2))
        head = ["–" if rec[key] is None else str(rec[key]) for key in keys]
        lines.append("| " + " | ".join(head + cells) + " |")
    notes = ("Values: mean ± sample standard deviation over the fine-tuning seeds. HellaSwag: lm-eval `acc_norm` "
             "(length-normalised accuracy); MMLU: lm-eval `acc`. Attitude: the Default agent's mean survey value "
             "at the last iteration of every debate on the topic.")
    if by_party:
        notes += (" Party rows: benchmarks of that party's adapters; the attitude is the Default agent's (on the "
                  "base model) in the debates that seat each partisan on its own party's adapter, shared by both "
                  "parties' rows.")
    return "\n".join(lines) + "\n\n" + notes + "\n"
