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

_DEBATES = """SELECT debate_id, topic_id AS topic, json_extract(spec_json, '$.topic.name') AS topic_name,
  repetition, seed, first_speaker, rounds, n_agents, status, error FROM debates"""
_AGENTS = "SELECT debate_id, agent_index, name AS agent, role, persona_id FROM agents"
_TURNS = """SELECT t.debate_id, d.topic_id AS topic, d.repetition, t.iteration, t.agent_index, a.name AS agent,
  a.role, t.text, t.completion_tokens, t.finish_reason """ + TURNS_JOINED
_SURVEYS = """SELECT s.debate_id, d.topic_id AS topic, d.repetition, s.iteration, s.agent_index, a.name AS agent,
  a.role, s.method, s.score, s.valid, s.expected_score, s.option_mass, {source} AS source, s.raw, s.probs_json
  """ + SURVEYS_JOINED


@dataclass
class RunViews:
    """One run database's tables as read: ``surveys.valid`` is 0/1 and ``surveys.probs_json``
    the stored JSON text; ``meta`` holds each stored value decoded from JSON (text otherwise)."""

    debates: pd.DataFrame
    agents: pd.DataFrame
    turns: pd.DataFrame
    surveys: pd.DataFrame
    meta: dict[str, Any]

    def frames(self) -> dict[str, pd.DataFrame]:
        """The four DataFrames by name."""
        return {"debates": self.debates, "agents": self.agents, "turns": self.turns, "surveys": self.surveys}


def read_views(run_dir: Path) -> RunViews:
    """The views of the run database in ``run_dir``, all from one snapshot; one line (a
    :class:`DebatelabError`) when it cannot be read."""
    path = run_dir / DB_NAME
    db = read_run_database(path)
    try:
        # Runs from before migration 3 (read-only here, so never migrated) have no source column.
        columns = {row[1] for row in db.execute("PRAGMA table_info(surveys)")}
        surveys = _SURVEYS.format(source="s.source" if "source" in columns else "NULL")
        frames = {name: pd.read_sql_query(sql, db) for name, sql in
                  (("debates", _DEBATES), ("agents", _AGENTS), ("turns", _TURNS), ("surveys", surveys))}
        meta = {k: _json_or_text(v) for k, v in db.execute("SELECT key, value FROM meta")}
    except (sqlite3.Error, pd.errors.DatabaseError) as exc:  # pandas wraps sqlite errors in its own class
        raise DebatelabError(f"cannot read run database {path}: {' '.join(str(exc).split())}") from None
    finally:
        db.close()
    return RunViews(meta=meta, **frames)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value
