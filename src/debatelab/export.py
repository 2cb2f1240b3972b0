"""Stable CSV exports of a run, rewritten atomically from the database after every run or resume:
all three files are written in full (and fsynced) before any of them replaces the old one, so a
failed export (a full disk) leaves the previous, mutually consistent set in place."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

from .files import AtomicFiles, atomic_files
from .store import RunStore, attitude_rows, debate_rows, turn_rows

ATTITUDE_COLUMNS = (
    "debate_id", "topic", "repetition", "agent", "agent_index", "role", "iteration", "method",
    "score", "valid", "expected_score", "option_mass", "source", "raw", *(f"p{i}" for i in range(11)),
)
TURN_COLUMNS = (
    "debate_id", "topic", "repetition", "iteration", "agent", "agent_index", "role", "text",
    "completion_tokens", "finish_reason",
)

DEBATE_COLUMNS = (
    "debate_id", "topic", "repetition", "status", "turns", "surveys", "invalid_surveys", "failures", "error",
)


def _attitude_cells(store: RunStore) -> Iterable[Sequence[object]]:
    # The distribution becomes the eleven p0..p10 columns, empty where a survey has none.
    for row in attitude_rows(store):
        yield (*row[:-1], *(row.probs if row.probs is not None else [None] * 11))


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]], files: AtomicFiles) -> None:
    """Write one CSV as part of ``files``, the set replaced together."""
    with files.open(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)


def export_run(store: RunStore, run_dir: Path) -> None:
    """debates.csv (status, failures and invalid surveys per debate), attitudes.csv, turns.csv."""
    with atomic_files() as files:
        write_csv(run_dir / "debates.csv", DEBATE_COLUMNS, debate_rows(store), files)
        write_csv(run_dir / "attitudes.csv", ATTITUDE_COLUMNS, _attitude_cells(store), files)
        write_csv(run_dir / "turns.csv", TURN_COLUMNS, turn_rows(store), files)
