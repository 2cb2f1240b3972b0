"""A run database as pandas DataFrames with join keys (``debate_id``, ``agent_index``): the
views analysis reads through. Imports pandas, so :mod:`debatelab.store` does not import this
module; :mod:`debatelab.analysis.frames` does.

The database is opened read-only (analysis must never change or lock a run that may still be
going), verified (a damaged database is refused, not shown with rows silently missing), and read
in one snapshot. Columns and dtypes are what ``pandas.read_sql_query`` gives for these queries.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DebatelabError
from .read import SURVEYS_JOINED, TURNS_JOINED
from .schema import DB_NAME, read_run_database
from .stances import STANCES_JOINED

_DEBATES = """SELECT debate_id, topic_id AS topic, json_extract(spec_json, '$.topic.name') AS topic_name,
  repetition, seed, first_speaker, rounds, n_agents, status, error FROM debates"""
_AGENTS = "SELECT debate_id, agent_index, name AS agent, role, persona_id FROM agents"
_TURNS = """SELECT t.debate_id, d.topic_id AS topic, d.repetition, t.iteration, t.agent_index, a.name AS agent,
  a.role, t.text, t.completion_tokens, t.finish_reason, {prompt_sha} AS prompt_sha """ + TURNS_JOINED
_SURVEYS = """SELECT s.debate_id, d.topic_id AS topic, d.repetition, s.iteration, s.agent_index, a.name AS agent,
  a.role, s.method, s.score, s.valid, s.expected_score, s.option_mass, {source} AS source, s.raw, s.probs_json,
  {prompt_sha} AS prompt_sha """ + SURVEYS_JOINED
_STANCES = """SELECT j.debate_id, d.topic_id AS topic, d.repetition, j.iteration, t.agent_index, a.name AS agent,
  a.role, j.judge, j.method, j.score, j.valid, j.expected_score, j.option_mass, j.source, j.raw, j.probs_json
  """ + STANCES_JOINED
_STANCE_COLUMNS = ["debate_id", "topic", "repetition", "iteration", "agent_index", "agent", "role", "judge",
                   "method", "score", "valid", "expected_score", "option_mass", "source", "raw", "probs_json"]


@dataclass
class RunViews:
    """One run database's tables as read: ``surveys.valid`` is 0/1 and ``surveys.probs_json``
    the stored JSON text; ``meta`` holds each stored value decoded from JSON (text otherwise)."""

    debates: pd.DataFrame
    agents: pd.DataFrame
    turns: pd.DataFrame
    surveys: pd.DataFrame
    meta: dict[str, Any]
    stances: pd.DataFrame
    """A stance judge's scores of the replies (empty when none was run; ``valid`` 0/1)."""

    def frames(self) -> dict[str, pd.DataFrame]:
        """The four DataFrames of the run itself by name (stances are the judge's, apart)."""
        return {"debates": self.debates, "agents": self.agents, "turns": self.turns, "surveys": self.surveys}


def read_views(run_dir: Path) -> RunViews:
    """The views of the run database in ``run_dir``, all from one snapshot; one line (a
    :class:`DebatelabError`) when it cannot be read."""
    path = run_dir / DB_NAME
    db = read_run_database(path)
    try:
        # Runs from before migrations 3 and 5 (read-only here, so never migrated) lack their columns.
        surveys = _SURVEYS.format(source=_column(db, "surveys", "s", "source"),
                                  prompt_sha=_column(db, "surveys", "s", "prompt_sha"))
        turns = _TURNS.format(prompt_sha=_column(db, "turns", "t", "prompt_sha"))
        frames = {name: pd.read_sql_query(sql, db) for name, sql in
                  (("debates", _DEBATES), ("agents", _AGENTS), ("turns", turns), ("surveys", surveys))}
        meta = {k: _json_or_text(v) for k, v in db.execute("SELECT key, value FROM meta")}
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # Runs from before migration 4 (read-only here, so never migrated) have no stances table.
        stances = (pd.read_sql_query(_STANCES, db) if "stances" in tables
                   else pd.DataFrame({c: [] for c in _STANCE_COLUMNS}))
    except (sqlite3.Error, pd.errors.DatabaseError) as exc:  # pandas wraps sqlite errors in its own class
        raise DebatelabError(f"cannot read run database {path}: {' '.join(str(exc).split())}") from None
    finally:
        db.close()
    return RunViews(meta=meta, stances=stances, **frames)


def _column(db: sqlite3.Connection, table: str, alias: str, column: str) -> str:
    """``alias.column``, or NULL where the table (of an older schema) has no such column."""
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    return f"{alias}.{column}" if column in columns else "NULL"


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value
