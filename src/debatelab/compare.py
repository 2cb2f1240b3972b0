"""Compare the exports of two run directories: text and integers exactly, floats to a precision.

Two runs of one config on the transformers backends agree in every text and integer value, while
their float values (survey probabilities, expected scores, option mass) can differ in the last
bits: float32 results depend on the shapes a value was computed in (how many rows a micro-batch
has, how much left padding a row gets, whether a prompt prefix came from the prefix cache), and
those differ between an uninterrupted run and one resumed after a kill, or one run with other
``batch_size``/``max_in_flight``/``prefix_cache_mb``. Two floats count as equal when they differ
by at most ``PRECISION`` absolutely or relatively, whichever is larger (``math.isclose`` with both
tolerances): 1e-4 of a probability, 1e-4 of its magnitude for an expected score of 1..10 (README,
"Reliability").

The comparison is generic, so columns added later are covered without changes here:

- CSV: headers and row counts must match. A *float column* is one whose non-empty cells, in both
  files, are all floats as Python writes them (``repr``: "0.25", "1e-05", "nan") or integers, at
  least one a float. Two floats of a float column are compared within the tolerances; every other pair
  of cells (text, integers, booleans, an empty cell, "7" against "7.0") must match exactly, so a
  text column is never compared loosely unless every one of its values is a float's repr.
- JSONL: line by line; JSON floats within the tolerances, everything else exactly.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .readers import read_jsonl

PRECISION = 1e-4
"""Tolerance for float values in exports, absolute and relative (whichever is larger). Measured
between resumed and uninterrupted runs, and between waves with prefix reuse and one debate at a
time without it: at most 6e-6 in a probability and 3.5e-5 (relative 4e-6) in an expected score."""

EXPORTS = ("debates.csv", "turns.csv", "attitudes.csv", "personas.jsonl")


@dataclass(frozen=True)
class Difference:
    file: str
    row: int | None
    """1-based data row (line, for JSONL); None for the file as a whole (missing, header, length)."""
    column: str | None
    a: str | None
    b: str | None
    delta: float | None = None
    """|a - b| where both are numbers of a float column (and it exceeded the tolerances)."""

    def __str__(self) -> str:
        where = self.file + (f" row {self.row}" if self.row is not None else "")
        where += f" column {self.column}" if self.column is not None else ""
        extra = f" (|diff| {self.delta:.3g})" if self.delta is not None else ""
        return f"{where}: {self.a!r} != {self.b!r}{extra}"


@dataclass(frozen=True)
class _Cell:
    file: str
    row: int
    column: str
    a: Any
    b: Any
    is_float: bool


def compare_runs(dir_a: Path | str, dir_b: Path | str, atol: float = PRECISION, rtol: float = PRECISION,
                 files: Sequence[str] = EXPORTS) -> list[Difference]:
    """Every difference between the exports of two run directories; empty when they are equal,
    floats within ``max(atol, rtol * max(|a|, |b|))``. ``atol=0, rtol=0`` asks for exact equality.
    A file missing from both is skipped; missing from one, it is a difference."""
    diffs: list[Difference] = []
    for item in _walk(Path(dir_a), Path(dir_b), files, diffs):
        if item.is_float:
            delta = _delta(item.a, item.b)
            if delta is None or delta > max(atol, rtol * max(abs(item.a), abs(item.b))):
                diffs.append(Difference(item.file, item.row, item.column, _text(item.a), _text(item.b), delta))
        elif item.a != item.b:
            diffs.append(Difference(item.file, item.row, item.column, _text(item.a), _text(item.b)))
    return diffs


def max_deltas(dir_a: Path | str, dir_b: Path | str, files: Sequence[str] = EXPORTS) -> dict[str, float]:
    """The largest |a - b| of every float column ("file:column") over the pairs of floats both
    runs have; nan where a pair cannot be equal (nan, or an infinity, against another value)."""
    out: dict[str, float] = {}
    for item in _walk(Path(dir_a), Path(dir_b), files, []):
        if item.is_float:
            delta = _delta(item.a, item.b)
            key = f"{item.file}:{item.column}"
            previous = out.get(key, 0.0)
            out[key] = math.nan if delta is None or math.isnan(previous) else max(previous, delta)
    return out


def _walk(a: Path, b: Path, files: Sequence[str], diffs: list[Difference]) -> Iterator[_Cell]:
    for name in files:
        pa, pb = a / name, b / name
        if not pa.exists() and not pb.exists():
            continue
        if not pa.exists() or not pb.exists():
            diffs.append(Difference(name, None, None, "present" if pa.exists() else "missing",
                                    "present" if pb.exists() else "missing"))
            continue
        if name.endswith(".jsonl"):
            yield from _jsonl_cells(name, pa, pb, diffs)
        else:
            yield from _csv_cells(name, pa, pb, diffs)


def _csv_cells(name: str, pa: Path, pb: Path, diffs: list[Difference]) -> Iterator[_Cell]:
    rows_a, rows_b = _read_csv(pa), _read_csv(pb)
    head_a, head_b = (rows_a[0] if rows_a else []), (rows_b[0] if rows_b else [])
    if head_a != head_b:
        diffs.append(Difference(name, None, "header", ",".join(head_a), ",".join(head_b)))
        return
    body_a, body_b = rows_a[1:], rows_b[1:]
    if len(body_a) != len(body_b):
        diffs.append(Difference(name, None, "rows", str(len(body_a)), str(len(body_b))))
    floats = [_float_column([r[i] for r in body_a + body_b if i < len(r)]) for i in range(len(head_a))]
    for number, (ra, rb) in enumerate(zip(body_a, body_b), start=1):
        if len(ra) != len(rb) or len(ra) != len(head_a):
            diffs.append(Difference(name, number, "cells", str(len(ra)), str(len(rb))))
            continue
        for column, x, y, is_float in zip(head_a, ra, rb, floats):
            if is_float and _is_float(x) and _is_float(y):
                yield _Cell(name, number, column, float(x), float(y), True)
            else:
                yield _Cell(name, number, column, x, y, False)


def _jsonl_cells(name: str, pa: Path, pb: Path, diffs: list[Difference]) -> Iterator[_Cell]:
    rows_a = [row for _, row in read_jsonl(pa, name)]  # the one JSONL reader: splits on "\n" only
    rows_b = [row for _, row in read_jsonl(pb, name)]
    if len(rows_a) != len(rows_b):
        diffs.append(Difference(name, None, "lines", str(len(rows_a)), str(len(rows_b))))
    for number, (ra, rb) in enumerate(zip(rows_a, rows_b), start=1):
        yield from _json_cells(name, number, "", ra, rb)


def _json_cells(name: str, row: int, path: str, x: Any, y: Any) -> Iterator[_Cell]:
    if isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys():
        for key in x:
            yield from _json_cells(name, row, f"{path}.{key}" if path else key, x[key], y[key])
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            yield from _json_cells(name, row, f"{path}[{i}]", u, v)
    elif _json_number(x) and _json_number(y) and (isinstance(x, float) or isinstance(y, float)):
        yield _Cell(name, row, path or "value", float(x), float(y), True)
    else:  # text, integers, booleans, null, or mismatched structure: exactly
        yield _Cell(name, row, path or "value", x, y, False)


def _json_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _float_column(cells: list[str]) -> bool:
    values = [c for c in cells if c != ""]
    return any(_is_float(c) for c in values) and all(_is_float(c) or _is_integer(c) for c in values)


def _is_float(text: str) -> bool:
    """A float written as Python writes one (csv writes ``repr``): "0.5", "1e-05", "nan", "-inf"."""
    try:
        return repr(float(text)) == text
    except ValueError:
        return False


def _is_integer(text: str) -> bool:
    digits = text[1:] if text[:1] == "-" else text
    return digits.isascii() and digits.isdigit()


def _delta(x: Any, y: Any) -> float | None:
    """|x - y| for two numbers; 0 for equal infinities or two nans; None when they cannot be
    equal at any tolerance (not both numbers, nan against a number, an infinity against another value)."""
    if not isinstance(x, float) or not isinstance(y, float):
        return None
    if x == y or (math.isnan(x) and math.isnan(y)):
        return 0.0
    delta = abs(x - y)
    return delta if math.isfinite(delta) else None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if not isinstance(value, float) else repr(value)
