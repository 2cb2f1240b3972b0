"""SQLite storage of one run: append-only migrations, every turn and survey committed as it happens.

Primary keys make duplicates impossible: (debate_id, iteration) for turns and
(debate_id, iteration, agent_index) for surveys. Resume reads what is committed and continues.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from . import stopping
from .errors import DebatelabError
from .types import DebateSpec, Persona, SurveyAnswer, Turn

DB_NAME = "run.sqlite"


def _m001_initial(db: sqlite3.Connection) -> None:
    _execute_all(db, """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE personas (
            persona_id TEXT PRIMARY KEY, party TEXT NOT NULL, name TEXT NOT NULL,
            background TEXT NOT NULL, model TEXT, seed INTEGER, prompt TEXT, template_version TEXT,
            created_at REAL NOT NULL);
        CREATE TABLE debates (
            debate_id TEXT PRIMARY KEY, topic_id TEXT NOT NULL, repetition INTEGER NOT NULL,
            seed INTEGER NOT NULL, first_speaker INTEGER NOT NULL, rounds INTEGER NOT NULL,
            n_agents INTEGER NOT NULL, spec_json TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending', error TEXT,
            created_at REAL NOT NULL, finished_at REAL);
        CREATE TABLE agents (
            debate_id TEXT NOT NULL REFERENCES debates, agent_index INTEGER NOT NULL,
            name TEXT NOT NULL, role TEXT NOT NULL, persona_id TEXT,
            PRIMARY KEY (debate_id, agent_index));
        CREATE TABLE turns (
            debate_id TEXT NOT NULL REFERENCES debates, iteration INTEGER NOT NULL,
            agent_index INTEGER NOT NULL, text TEXT NOT NULL, prompt_tokens INTEGER,
            completion_tokens INTEGER, finish_reason TEXT, created_at REAL NOT NULL,
            PRIMARY KEY (debate_id, iteration));
        CREATE TABLE surveys (
            debate_id TEXT NOT NULL REFERENCES debates, iteration INTEGER NOT NULL,
            agent_index INTEGER NOT NULL, method TEXT NOT NULL, score INTEGER, valid INTEGER NOT NULL,
            expected_score REAL, probs_json TEXT, option_mass REAL, raw TEXT, created_at REAL NOT NULL,
            PRIMARY KEY (debate_id, iteration, agent_index));
        """)


def _execute_all(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the migration's transaction early, so run statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _m002_failures(db: sqlite3.Connection) -> None:
    # Every failed attempt is kept (debates.error only holds the latest), so flaky backends show.
    db.execute("""
        CREATE TABLE failures (
            debate_id TEXT NOT NULL REFERENCES debates, iteration INTEGER NOT NULL,
            error TEXT NOT NULL, created_at REAL NOT NULL)""")


# Append only: never edit or reorder an applied migration.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_initial, _m002_failures]


class RunStore:
    def __init__(self, path: Path):
        self.path = path
        self._lock = _lock_run_dir(path.parent)
        try:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed wave survives power loss too
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._lock.close()
            raise DebatelabError(f"corrupt or unreadable run database {path}: {exc}") from None

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
        done = {row[0] for row in self.db.execute("SELECT id FROM _migrations")}
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number in done:
                continue
            with self.transaction():
                migration(self.db)
                self.db.execute("INSERT INTO _migrations VALUES (?, ?, ?)", (number, migration.__name__, time.time()))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; a stop signal that arrives
        meanwhile waits until the commit is done (see :mod:`debatelab.stopping`)."""
        with stopping.critical():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
        self._lock.close()  # releases the flock

    # ---- run identity -------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, state: str, detail: str = "") -> None:
        """The run's state for humans and tools: running, interrupted, incomplete, failed, complete."""
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [("state", state), ("state_detail", detail), ("state_at", repr(time.time()))])

    def claim(self, fingerprint: str, meta: dict[str, Any]) -> None:
        """Bind the run directory to one config; refuse a different one."""
        existing = self.get_meta("config_fingerprint")
        if existing is not None and existing != fingerprint:
            raise DebatelabError(
                f"run directory {self.path.parent} was made from a different config "
                f"(fingerprint {existing}, this config {fingerprint}); choose another --out"
            )
        if existing is None:
            with self.transaction():
                rows = [("config_fingerprint", fingerprint)] + [(k, json.dumps(v)) for k, v in meta.items()]
                self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows)

    # ---- personas -----------------------------------------------------------------------
    def add_personas(self, personas: Iterable[Persona]) -> None:
        now = time.time()
        with self.transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO personas VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(p.id, p.party, p.name, p.background, p.model, p.seed, p.prompt, p.template_version, now) for p in personas],
            )

    def personas(self) -> list[Persona]:
        rows = self.db.execute(
            "SELECT persona_id, party, name, background, model, seed, prompt, template_version FROM personas ORDER BY rowid"
        )
        keys = ("id", "party", "name", "background", "model", "seed", "prompt", "template_version")
        return [Persona(**dict(zip(keys, row))) for row in rows]

    # ---- debates ------------------------------------------------------------------------
    def register(self, specs: Iterable[DebateSpec]) -> None:
        now = time.time()
        with self.transaction():
            for s in specs:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO debates (debate_id, topic_id, repetition, seed, first_speaker, rounds,"
                    " n_agents, spec_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (s.debate_id, s.topic.id, s.repetition, s.seed, s.first_speaker, s.rounds, len(s.agents),
                     s.model_dump_json(), now),
                )
                if cur.rowcount:
                    self.db.executemany(
                        "INSERT INTO agents VALUES (?, ?, ?, ?, ?)",
                        [(s.debate_id, i, a.name, a.role, a.persona_id) for i, a in enumerate(s.agents)],
                    )

    def status(self, debate_id: str) -> str:
        return self.db.execute("SELECT status FROM debates WHERE debate_id = ?", (debate_id,)).fetchone()[0]

    def progress(self, debate_id: str) -> tuple[list[Turn], set[tuple[int, int]]]:
        turns = [
            Turn(iteration=r[0], agent_index=r[1], text=r[2], prompt_tokens=r[3] or 0,
                 completion_tokens=r[4] or 0, finish_reason=r[5] or "stop")
            for r in self.db.execute(
                "SELECT iteration, agent_index, text, prompt_tokens, completion_tokens, finish_reason"
                " FROM turns WHERE debate_id = ? ORDER BY iteration", (debate_id,))
        ]
        surveys = set(self.db.execute("SELECT iteration, agent_index FROM surveys WHERE debate_id = ?", (debate_id,)))
        return turns, surveys

    def add_results(self, turns: list[tuple[str, Turn]], surveys: list[tuple[str, SurveyAnswer]],
                    finished: list[str], failed: Iterable[tuple[str, int, str]] = ()) -> None:
        """Commit one wave's results atomically (a crash loses at most the wave in flight).

        ``failed`` holds (debate_id, iteration, error) for debates whose request failed for good:
        they are marked failed, keep what they had committed, and are retried on resume."""
        now = time.time()
        failed = list(failed)
        with self.transaction():
            self.db.executemany("INSERT INTO failures VALUES (?, ?, ?, ?)", [(*f, now) for f in failed])
            self.db.executemany("UPDATE debates SET status = 'failed', error = ? WHERE debate_id = ?",
                                [(error, d) for d, _, error in failed])
            self.db.executemany(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(d, t.iteration, t.agent_index, t.text, t.prompt_tokens, t.completion_tokens, t.finish_reason, now)
                 for d, t in turns],
            )
            self.db.executemany(
                "INSERT INTO surveys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(d, s.iteration, s.agent_index, s.method, s.score, int(s.valid), s.expected_score,
                  json.dumps(s.probs) if s.probs is not None else None, s.option_mass, s.raw, now)
                 for d, s in surveys],
            )
            self.db.executemany(
                "UPDATE debates SET status = 'complete', finished_at = ? WHERE debate_id = ?",
                [(now, d) for d in finished],
            )

    def mark_running(self, debate_ids: Iterable[str]) -> None:
        with self.transaction():
            self.db.executemany("UPDATE debates SET status = 'running', error = NULL"
                                " WHERE debate_id = ? AND status IN ('pending', 'failed')", [(d,) for d in debate_ids])

    def debate_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT debate_id FROM debates")}

    def survey_counts(self) -> tuple[int, int]:
        """(surveys, invalid surveys) committed so far."""
        total, invalid = self.db.execute("SELECT COUNT(*), COALESCE(SUM(1 - valid), 0) FROM surveys").fetchone()
        return total, invalid

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM debates GROUP BY status").fetchall())


def _lock_run_dir(run_dir: Path) -> IO[str]:
    """One writer per run directory: a second process is refused instead of racing the first."""
    handle = (run_dir / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DebatelabError(f"run directory {run_dir} is in use by another debatelab process") from None
    return handle


def open_store(run_dir: Path) -> RunStore:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DebatelabError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
    return RunStore(run_dir / DB_NAME)
