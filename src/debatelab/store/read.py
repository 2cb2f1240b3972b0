"""Typed rows read from a run database: the row sets of the CSV exports (read on the writer's
own connection, so they hold exactly what the run committed) and a run's transcript.

Rows come in a stable order (topic, repetition, debate, iteration, agent) so that exports of the
same run are byte-identical however its waves were scheduled. Field names are the CSV columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

from .schema import DB_NAME, read_run_database

if TYPE_CHECKING:
    from .writer import RunStore


class DebateRow(NamedTuple):
    """One debate: its status and how many turns, surveys, invalid surveys and failed attempts."""

    debate_id: str
    topic: str
    repetition: int
    status: str
    turns: int
    surveys: int
    invalid_surveys: int
    failures: int
    error: str | None


class AttitudeRow(NamedTuple):
    """One agent's survey answer at one iteration; ``probs`` the 0..10 distribution, if any;
    ``prompt_sha`` the hash of what it sent (None in runs from before migration 5)."""

    debate_id: str
    topic: str
    repetition: int
    agent: str
    agent_index: int
    role: str
    iteration: int
    method: str
    score: int | None
    valid: bool
    expected_score: float | None
    option_mass: float | None
    source: str | None
    raw: str | None
    probs: list[float | None] | None
    prompt_sha: str | None


class TurnRow(NamedTuple):
    """One reply of one debate."""

    debate_id: str
    topic: str
    repetition: int
    iteration: int
    agent: str
    agent_index: int
    role: str
    text: str
    completion_tokens: int | None
    finish_reason: str | None
    prompt_sha: str | None


# Each survey and turn with its debate (topic, repetition) and its agent (name, role); the
# analysis views (views.py) read the same joins.
SURVEYS_JOINED = """FROM surveys s JOIN debates d USING (debate_id)
JOIN agents a ON a.debate_id = s.debate_id AND a.agent_index = s.agent_index"""
TURNS_JOINED = """FROM turns t JOIN debates d USING (debate_id)
JOIN agents a ON a.debate_id = t.debate_id AND a.agent_index = t.agent_index"""

_DEBATES_SQL = """
SELECT d.debate_id, d.topic_id, d.repetition, d.status,
       (SELECT COUNT(*) FROM turns t WHERE t.debate_id = d.debate_id),
       (SELECT COUNT(*) FROM surveys s WHERE s.debate_id = d.debate_id),
       (SELECT COUNT(*) FROM surveys s WHERE s.debate_id = d.debate_id AND NOT s.valid),
       (SELECT COUNT(*) FROM failures f WHERE f.debate_id = d.debate_id),
       d.error
FROM debates d ORDER BY d.topic_id, d.repetition, d.debate_id
"""

_ATTITUDES_SQL = """
SELECT s.debate_id, d.topic_id, d.repetition, a.name, s.agent_index, a.role, s.iteration, s.method,
       s.score, s.valid, s.expected_score, s.option_mass, s.source, s.raw, s.probs_json, s.prompt_sha
""" + SURVEYS_JOINED + """
ORDER BY d.topic_id, d.repetition, s.debate_id, s.iteration, s.agent_index
"""

_TURNS_SQL = """
SELECT t.debate_id, d.topic_id, d.repetition, t.iteration, a.name, t.agent_index, a.role, t.text,
       t.completion_tokens, t.finish_reason, t.prompt_sha
""" + TURNS_JOINED + """ {where}
ORDER BY d.topic_id, d.repetition, t.debate_id, t.iteration
"""


def debate_rows(store: RunStore) -> Iterator[DebateRow]:
    """Every debate of the run, with its counts."""
    return map(DebateRow._make, store.db.execute(_DEBATES_SQL))


def attitude_rows(store: RunStore) -> Iterator[AttitudeRow]:
    """Every committed survey answer, with its debate's topic and its agent's name and role."""
    for *head, probs_json, sha in store.db.execute(_ATTITUDES_SQL):
        head[9] = bool(head[9])  # stored as 0/1
        yield AttitudeRow(*head, json.loads(probs_json) if probs_json else None, sha)


_ENCOUNTERS_ONLY = "WHERE t.debate_id IN (SELECT debate_id FROM society_units WHERE kind = 'encounter')"


def turn_rows(store: RunStore, encounters_only: bool = False) -> Iterator[TurnRow]:
    """Every committed reply, with its debate's topic and its agent's name and role; with
    ``encounters_only``, a society's encounter turns alone (not its agents' notes to self)."""
    return map(TurnRow._make, store.db.execute(_TURNS_SQL.format(where=_ENCOUNTERS_ONLY if encounters_only else "")))


def read_transcript(run_dir: Path) -> dict[str, Any]:
    """A run's transcript, read-only: turns as {(debate, iteration): (text, completion tokens)},
    surveys as {(debate, iteration, agent): (score, expected score)}."""
    db = read_run_database(run_dir / DB_NAME)
    try:
        turns = {(d, i): (text, n or 0) for d, i, text, n in
                 db.execute("SELECT debate_id, iteration, text, completion_tokens FROM turns")}
        surveys = {(d, i, a): (s, e) for d, i, a, s, e in
                   db.execute("SELECT debate_id, iteration, agent_index, score, expected_score FROM surveys")}
    finally:
        db.close()
    return {"turns": turns, "surveys": surveys}
