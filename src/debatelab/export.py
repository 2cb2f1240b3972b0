"""Stable CSV exports of a run, rewritten atomically from the database after every run or resume:
all three files are written in full (and fsynced) before any of them replaces the old one, so a
failed export (a full disk) leaves the previous, mutually consistent set in place."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from .files import AtomicFiles, atomic_files
from .store import RunStore, attitude_rows, debate_rows, stance_rows, turn_rows

# New columns go last, so readers of an older release's files still find theirs where they were.
ATTITUDE_COLUMNS = (
    "debate_id", "topic", "repetition", "agent", "agent_index", "role", "iteration", "method",
    "score", "valid", "expected_score", "option_mass", "source", "raw", *(f"p{i}" for i in range(11)),
    "prompt_sha",
)
TURN_COLUMNS = (
    "debate_id", "topic", "repetition", "iteration", "agent", "agent_index", "role", "text",
    "completion_tokens", "finish_reason", "prompt_sha",
)

DEBATE_COLUMNS = (
    "debate_id", "topic", "repetition", "status", "turns", "surveys", "invalid_surveys", "failures", "error",
)


STANCE_COLUMNS = (
    "debate_id", "topic", "repetition", "iteration", "agent", "agent_index", "role", "judge", "method",
    "score", "valid", "expected_score", "option_mass", "source", "raw", *(f"p{i}" for i in range(11)),
)


def with_probs(rows: Iterable[NamedTuple]) -> Iterable[Sequence[object]]:
    # The distribution (a row's ``probs`` field) becomes the eleven p0..p10 columns in its place
    # (index = score), empty where a row has none; on Pew's 4-point scale only p0..p3 are filled.
    for row in rows:
        at = row._fields.index("probs")
        probs = list(row[at]) if row[at] is not None else []
        yield (*row[:at], *probs, *[None] * (11 - len(probs)), *row[at + 1:])


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
        write_csv(run_dir / "attitudes.csv", ATTITUDE_COLUMNS, with_probs(attitude_rows(store)), files)
        write_csv(run_dir / "turns.csv", TURN_COLUMNS, turn_rows(store), files)


def export_stances(store: RunStore, run_dir: Path) -> None:
    """stances.csv: every judged reply, every judge (written atomically after each scoring)."""
    with atomic_files() as files:
        write_csv(run_dir / "stances.csv", STANCE_COLUMNS, with_probs(stance_rows(store)), files)
