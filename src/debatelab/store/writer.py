"""The writer of one run's database: append-only migrations applied on open, every turn and
survey committed as it happens, resume from what is committed.

Primary keys make duplicates impossible: (debate_id, iteration) for turns and
(debate_id, iteration, agent_index) for surveys. Before anything is written, the file is checked
read-only (:mod:`.schema`): another program's database, one from a newer debatelab, or a damaged
one is refused and left exactly as it was.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import stopping
from ..errors import DebatelabError
from .errors import disk_full_error
from ..types import DebateSpec, Persona, SurveyAnswer, Turn
from .lock import RunLock, lock_run_dir
from .schema import APPLICATION_ID, DB_NAME, MIGRATIONS, check_before_writing


class RunStore:
    """The one writer of a run database (under the run directory's lock)."""

    def __init__(self, path: Path, lock: RunLock | None = None, checked: bool = False):
        """Open (creating if needed) the run database at ``path``. ``lock`` is the run
        directory's lock when the caller already holds it; otherwise it is taken here.
        ``checked``: the caller ran :func:`check_claimable` under that lock, so the file is
        known sound and is not verified a second time."""
        self.path = path
        self._own_lock = lock is None
        self._lock = lock or lock_run_dir(path.parent)
        db = None
        try:
            if not (checked and lock is not None):
                check_before_writing(path)  # refuse a foreign, newer or damaged file before touching it
            self.db = db = sqlite3.connect(path, isolation_level=None)
            self._configure()
        except BaseException as exc:
            if db is not None:
                db.close()
            if self._own_lock:
                self._lock.release(undo=isinstance(exc, DebatelabError) and exc.bad_input)
            if isinstance(exc, sqlite3.DatabaseError):
                raise disk_full_error(exc, path.parent) or DebatelabError(
                    f"cannot read run database {path}: it is corrupt or unreadable ({exc})") from None
            raise

    def _configure(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed wave survives power loss too
        self._migrate()

    def _migrate(self) -> None:
        with self.transaction() as db:  # the marker and the migrations table appear together
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
            if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        done = {row[0] for row in self.db.execute("SELECT id FROM _migrations")}
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number in done:
                continue
            with self.transaction():
                migration(self.db)
                self.db.execute("INSERT INTO _migrations VALUES (?, ?, ?)", (number, migration.__name__, time.time()))
                self.db.execute(f"PRAGMA user_version = {number}")  # the schema, for tools that read only the header

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (a failed COMMIT included,
        e.g. on a full disk); a stop signal that arrives meanwhile waits until the commit is done
        (see :mod:`debatelab.stopping`)."""
        with stopping.critical():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (it does on SQLITE_FULL); a failing ROLLBACK
                # must not hide the error that caused it.
                if self.db.in_transaction:
                    with suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()
        if self._own_lock:
            self._lock.release()  # after the close: no other writer may start before our checkpoint

    # ---- run identity -------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, state: str, detail: str = "") -> None:
        """The run's state for humans and tools: running, interrupted, incomplete, failed, complete."""
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [("state", state), ("state_detail", detail), ("state_at", repr(time.time()))])

    def try_set_state(self, state: str, detail: str = "") -> None:
        """:meth:`set_state`, best effort (on the way out of a failing run, whose own error
        matters more than this bookkeeping): a database error is swallowed."""
        with suppress(sqlite3.Error):
            self.set_state(state, detail)

    def try_set_meta(self, key: str, value: Any) -> None:
        """:meth:`set_meta`, best effort (bookkeeping, as :meth:`try_set_state`)."""
        with suppress(sqlite3.Error):
            self.set_meta(key, value)

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (as JSON) under ``key``, replacing what was there: facts measured anew
        on every run and resume, such as how each model is conditioned. An unchanged value is
        not rewritten, so a resume that does nothing changes nothing."""
        text = json.dumps(value)
        if self.get_meta(key) != text:
            with self.transaction():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    def bind_identity(self, identity: str) -> str | None:
        """Store the run's model identity (JSON) if none is stored yet and return None; else
        return the stored one, unchanged, for the caller to compare."""
        known = self.get_meta("model_identity")
        if known is None:
            with self.transaction() as db:
                db.execute("INSERT INTO meta VALUES ('model_identity', ?)", (identity,))
        return known

    def claim(self, fingerprint: str, meta: dict[str, Any]) -> None:
        """Bind the run directory to one config; refuse a different one."""
        existing = self.get_meta("config_fingerprint")
        if existing is not None and existing != fingerprint:
            raise _other_config(self.path.parent, existing, fingerprint)
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
                 completion_tokens=r[4] or 0, finish_reason=r[5] or "stop", prompt_sha=r[6])
            for r in self.db.execute(
                "SELECT iteration, agent_index, text, prompt_tokens, completion_tokens, finish_reason, prompt_sha"
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
                "INSERT INTO turns (debate_id, iteration, agent_index, text, prompt_tokens, completion_tokens,"
                " finish_reason, created_at, prompt_sha) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(d, t.iteration, t.agent_index, t.text, t.prompt_tokens, t.completion_tokens, t.finish_reason, now,
                  t.prompt_sha) for d, t in turns],
            )
            self.db.executemany(
                "INSERT INTO surveys (debate_id, iteration, agent_index, method, score, valid, expected_score,"
                " probs_json, option_mass, raw, created_at, source, prompt_sha)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(d, s.iteration, s.agent_index, s.method, s.score, int(s.valid), s.expected_score,
                  json.dumps(s.probs) if s.probs is not None else None, s.option_mass, s.raw, now, s.source,
                  s.prompt_sha) for d, s in surveys],
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

    def distribution_counts(self) -> tuple[int, int, int, float | None]:
        """(surveys with a distribution, of them parsed from generated text (fallbacks), of them
        partial (only the API's top-k options scored), mean option mass where it is known)."""
        row = self.db.execute("SELECT COUNT(source), COALESCE(SUM(source = 'generated'), 0),"
                              " COALESCE(SUM(source = 'top_k'), 0), AVG(option_mass) FROM surveys").fetchone()
        return row[0], row[1], row[2], row[3]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM debates GROUP BY status").fetchall())


def _other_config(run_dir: Path, existing: str, fingerprint: str) -> DebatelabError:
    return DebatelabError(f"run directory {run_dir} was made from a different config (fingerprint "
                          f"{existing}, this config {fingerprint}); choose another --out")


def check_claimable(run_dir: Path, fingerprint: str) -> None:
    """Before any model loads or anything is written (a migration included): refuse a run
    directory whose database is foreign, damaged, newer, a link, or claimed by another config."""
    existing = check_before_writing(run_dir / DB_NAME)
    if existing is not None and existing != fingerprint:
        raise _other_config(run_dir, existing, fingerprint)


def open_store(run_dir: Path, lock: RunLock | None = None, checked: bool = False) -> RunStore:
    """The store of ``run_dir`` (created if needed), under ``lock`` or a lock taken here;
    ``checked`` as in :class:`RunStore`."""
    return RunStore(run_dir / DB_NAME, lock, checked)
