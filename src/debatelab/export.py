"""Stable CSV exports of a run, rewritten atomically from the database after every run or resume:
all three files are written in full (and fsynced) before any of them replaces the old one, so a
failed export (a full disk) leaves the previous, mutually consistent set in place."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Sequence

from .files import AtomicFiles, atomic_files
from .store import RunStore

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

_ATTITUDES_SQL = """
SELECT s.debate_id, d.topic_id, d.repetition, a.name, s.agent_index, a.role, s.iteration, s.method,
       s.score, s.valid, s.expected_score, s.option_mass, s.source, s.raw, s.probs_json
FROM surveys s JOIN debates d USING (debate_id)
JOIN agents a ON a.debate_id = s.debate_id AND a.agent_index = s.agent_index
ORDER BY d.topic_id, d.repetition, s.debate_id, s.iteration, s.agent_index
"""

_TURNS_SQL = """
SELECT t.debate_id, d.topic_id, d.repetition, t.iteration, a.name, t.agent_index, a.role, t.text,
       t.completion_tokens, t.finish_reason
FROM turns t JOIN debates d USING (debate_id)
JOIN agents a ON a.debate_id = t.debate_id AND a.agent_index = t.agent_index
ORDER BY d.topic_id, d.repetition, t.debate_id, t.iteration
"""


_DEBATES_SQL = """
SELECT d.debate_id, d.topic_id, d.repetition, d.status,
       (SELECT COUNT(*) FROM turns t WHERE t.debate_id = d.debate_id),
       (SELECT COUNT(*) FROM surveys s WHERE s.debate_id = d.debate_id),
       (SELECT COUNT(*) FROM surveys s WHERE s.debate_id = d.debate_id AND NOT s.valid),
       (SELECT COUNT(*) FROM failures f WHERE f.debate_id = d.debate_id),
       d.error
FROM debates d ORDER BY d.topic_id, d.repetition, d.debate_id
"""


def _attitude_rows(store: RunStore) -> Iterable[Sequence[object]]:
    for *head, probs_json in store.db.execute(_ATTITUDES_SQL):
        head[9] = bool(head[9])
        probs = json.loads(probs_json) if probs_json else [None] * 11
        yield (*head, *probs)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]], files: AtomicFiles) -> None:
    """Write one CSV as part of ``files``, the set replaced together."""
    with files.open(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)


def export_run(store: RunStore, run_dir: Path) -> None:
    """debates.csv (status, failures and invalid surveys per debate), attitudes.csv, turns.csv."""
    with atomic_files() as files:
        write_csv(run_dir / "debates.csv", DEBATE_COLUMNS, store.db.execute(_DEBATES_SQL), files)
        write_csv(run_dir / "attitudes.csv", ATTITUDE_COLUMNS, _attitude_rows(store), files)
        write_csv(run_dir / "turns.csv", TURN_COLUMNS, store.db.execute(_TURNS_SQL), files)
