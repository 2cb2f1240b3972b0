"""A judge's stance scores of a run's replies (``debatelab score-stance``), kept in the run
database beside the turns: one row per (debate, reply iteration, judge), committed per batch, so
an interrupted scoring resumes with what is missing and never scores a reply twice.

A judge is named by its model string; the first scoring binds that name to the backend's
identity (model, revision, adapter...), and a later scoring under the same name with another
identity is refused rather than mixed in.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Iterator, NamedTuple

from ..errors import DebatelabError
from ..types import SurveyAnswer

if TYPE_CHECKING:
    from .writer import RunStore


class ReplyToJudge(NamedTuple):
    """A committed reply a judge has not scored yet, with its debate's topic (JSON of the Topic)."""

    debate_id: str
    topic_json: str
    iteration: int
    text: str


class StanceRow(NamedTuple):
    """One judged reply (the stances.csv columns); ``probs`` the 0..10 distribution, if any."""

    debate_id: str
    topic: str
    repetition: int
    iteration: int
    agent: str
    agent_index: int
    role: str
    judge: str
    method: str
    score: int | None
    valid: bool
    expected_score: float | None
    option_mass: float | None
    source: str | None
    raw: str | None
    probs: list[float | None] | None


STANCES_JOINED = """FROM stances j JOIN debates d USING (debate_id)
JOIN turns t ON t.debate_id = j.debate_id AND t.iteration = j.iteration
JOIN agents a ON a.debate_id = t.debate_id AND a.agent_index = t.agent_index"""

_STANCES_SQL = """
SELECT j.debate_id, d.topic_id, d.repetition, j.iteration, a.name, t.agent_index, a.role, j.judge, j.method,
       j.score, j.valid, j.expected_score, j.option_mass, j.source, j.raw, j.probs_json
""" + STANCES_JOINED + """
ORDER BY d.topic_id, d.repetition, j.debate_id, j.iteration, j.judge
"""

_UNSCORED_SQL = """
SELECT t.debate_id, json_extract(d.spec_json, '$.topic'), t.iteration, t.text FROM turns t JOIN debates d USING (debate_id)
WHERE NOT EXISTS (SELECT 1 FROM stances j WHERE j.debate_id = t.debate_id AND j.iteration = t.iteration
                  AND j.judge = ?)
ORDER BY d.topic_id, d.repetition, t.debate_id, t.iteration
"""


def bind_judge(store: RunStore, judge: str, identity: str) -> None:
    """Bind ``judge`` to the backend ``identity`` (JSON) on first use; refuse another identity."""
    key = f"judge_identity:{judge}"
    known = store.get_meta(key)
    if known is None:
        with store.transaction() as db:
            db.execute("INSERT INTO meta VALUES (?, ?)", (key, identity))
    elif json.loads(known) != json.loads(identity):
        raise DebatelabError(f"judge {judge!r} already scored this run as another model ({known}); "
                             "score with another --judge name")


def unscored_replies(store: RunStore, judge: str) -> list[ReplyToJudge]:
    """Every committed reply ``judge`` has not scored, in the exports' order."""
    return [ReplyToJudge(*row) for row in store.db.execute(_UNSCORED_SQL, (judge,))]


def add_stances(store: RunStore, judge: str, rows: list[tuple[str, int, SurveyAnswer]]) -> None:
    """Commit one batch of (debate_id, reply iteration, answer) atomically."""
    now = time.time()
    with store.transaction() as db:
        db.executemany(
            "INSERT INTO stances (debate_id, iteration, judge, method, score, valid, expected_score, probs_json,"
            " option_mass, raw, source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d, i, judge, a.method, a.score, int(a.valid), a.expected_score,
              json.dumps(a.probs) if a.probs is not None else None, a.option_mass, a.raw, a.source, now)
             for d, i, a in rows])


def stance_rows(store: RunStore) -> Iterator[StanceRow]:
    """Every committed stance, with its debate's topic and its speaker's name and role."""
    for *head, probs_json in store.db.execute(_STANCES_SQL):
        head[10] = bool(head[10])
        yield StanceRow(*head, json.loads(probs_json) if probs_json else None)


def judged_count(store: RunStore, judge: str) -> int:
    """How many replies ``judge`` has scored."""
    return store.db.execute("SELECT COUNT(*) FROM stances WHERE judge = ?", (judge,)).fetchone()[0]
