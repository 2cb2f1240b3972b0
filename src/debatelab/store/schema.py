"""What a debatelab run database is: its append-only migrations, the marker that identifies it,
and the read-only checks made before anything writes to one or any analysis reads one.

A file is refused (one line, exit 2) when it is not SQLite, is another program's database, was
written by a newer debatelab (a migration this version does not know), or is damaged: SQLite's
integrity check fails, or a JSON column does not hold valid JSON of the expected shape. SQLite
keeps no page checksums, so damage it cannot see (a changed character in a turn's text) passes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

from ..errors import DebatelabError

DB_NAME = "run.sqlite"
"""The run database's file name inside a run directory."""

APPLICATION_ID = 0x44424C42
"""``PRAGMA application_id`` of every run database ("DBLB"). Databases made before it existed
have 0 and are recognised by their ``_migrations`` table; they get the marker when next opened."""

_HEADER = b"SQLite format 3\x00"


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


def _m003_survey_source(db: sqlite3.Connection) -> None:
    # How each survey's distribution was obtained (logprobs | generated), so a fallback is never silent.
    db.execute("ALTER TABLE surveys ADD COLUMN source TEXT")


def _m004_stances(db: sqlite3.Connection) -> None:
    # A judge's reading of each reply (score-stance), beside the turns; several judges may score one run.
    db.execute("""
        CREATE TABLE stances (
            debate_id TEXT NOT NULL REFERENCES debates, iteration INTEGER NOT NULL, judge TEXT NOT NULL,
            method TEXT NOT NULL, score INTEGER, valid INTEGER NOT NULL, expected_score REAL,
            probs_json TEXT, option_mass REAL, raw TEXT, source TEXT, created_at REAL NOT NULL,
            PRIMARY KEY (debate_id, iteration, judge))""")


def _m005_prompt_sha(db: sqlite3.Connection) -> None:
    # A hash of the exact text each reply and survey conditioned on, so two runs (two backends of
    # one model) can be checked for prompt identity; rows written before it stay NULL.
    db.execute("ALTER TABLE turns ADD COLUMN prompt_sha TEXT")
    db.execute("ALTER TABLE surveys ADD COLUMN prompt_sha TEXT")


def _m006_society(db: sqlite3.Connection) -> None:
    # A society's population and graph, and what each of its units (the debates of a society
    # run: encounters, summaries, panel surveys) is: its step, its number and its agents.
    _execute_all(db, """
        CREATE TABLE society_agents (
            agent INTEGER PRIMARY KEY, name TEXT NOT NULL, party TEXT NOT NULL, persona_id TEXT,
            community INTEGER, degree INTEGER NOT NULL);
        CREATE TABLE society_edges (
            source INTEGER NOT NULL, target INTEGER NOT NULL, PRIMARY KEY (source, target));
        CREATE TABLE society_units (
            debate_id TEXT PRIMARY KEY REFERENCES debates, kind TEXT NOT NULL, topic_id TEXT NOT NULL,
            step INTEGER NOT NULL, unit INTEGER NOT NULL, agents_json TEXT NOT NULL);
        CREATE INDEX society_units_by_step ON society_units (kind, topic_id, step)
        """)


# Append only: never edit or reorder an applied migration.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_initial, _m002_failures, _m003_survey_source,
                                                          _m004_stances, _m005_prompt_sha, _m006_society]

# Rows whose JSON the exports and the analysis parse: (table, column, shape test, row label).
_JSON_CHECKS = (
    ("debates", "spec_json", "json_type(spec_json) != 'object'", "debate_id"),
    ("surveys", "probs_json", "json_type(probs_json) != 'array' OR json_array_length(probs_json) NOT IN (4, 11)",
     "debate_id || ' iteration ' || iteration || ' agent ' || agent_index"),
    ("stances", "probs_json", "json_type(probs_json) != 'array' OR json_array_length(probs_json) != 11",
     "debate_id || ' iteration ' || iteration || ' judge ' || judge"),
)


def check_before_writing(path: Path) -> str | None:
    """Refuse ``path`` unless it is absent, empty or a sound run database of a known schema, and
    a plain file, not a link SQLite would write through. Read-only, and creates no side files
    (see :func:`_verify_file`). Returns the config fingerprint the database was claimed with
    (None: new or unclaimed), read on the same connection."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise DebatelabError(f"{path} is a symbolic link or not a regular file; refusing to write through it")
    if path.exists() and path.stat().st_size > 0:
        return _verify_file(path, immutable=not _wal(path).exists())
    return None


def read_run_database(path: Path) -> sqlite3.Connection:
    """A read-only connection to the verified run database at ``path``, inside one read
    transaction, so every query sees the same commit even while the run goes on."""
    if not path.is_file():
        raise DebatelabError(f"no run database in {path.parent} (expected {path.name})")
    quiet = not _wal(path).exists()  # nobody has it open: check it first without side files
    if quiet:
        _verify_file(path, immutable=True)
    db = _connect_read_only(path, immutable=False)  # a writer may start: take part in WAL locking
    try:
        db.execute("BEGIN")
        if not quiet:
            verify(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def _verify_file(path: Path, immutable: bool) -> str | None:
    """Verify ``path`` on a connection of its own and return its claimed config fingerprint.
    ``immutable`` (safe only while no one has the database open, i.e. it has no -wal file) reads
    the file as it is, so that not even SQLite's side files (-wal, -shm) appear beside a file
    that is then refused."""
    db = _connect_read_only(path, immutable)
    try:
        verify(db, path)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'config_fingerprint'").fetchone()
        except sqlite3.OperationalError:  # killed before its first migration: no meta table yet
            return None
        return row[0] if row else None
    finally:
        db.close()


def verify(db: sqlite3.Connection, path: Path) -> None:
    """Identity, schema version and integrity of an open database; one line if any fails."""
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        _check_identity(db, path, tables)
        _check_integrity(db, path, tables)
    except sqlite3.DatabaseError as exc:
        raise _refusal(path, f"it is corrupt ({_sqlite_message(str(exc))})") from None


def _connect_read_only(path: Path, immutable: bool) -> sqlite3.Connection:
    try:
        with path.open("rb") as fh:
            header = fh.read(len(_HEADER))
    except OSError as exc:
        raise DebatelabError(f"cannot read run database {path}: {exc.strerror}") from None
    if header != _HEADER:
        raise _refusal(path, "it is not an SQLite database (corrupt, or another program's file)")
    uri = path.absolute().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, isolation_level=None)


def _check_identity(db: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    blank = not tables and not db.execute("PRAGMA user_version").fetchone()[0]
    applied = _applied(db) if "_migrations" in tables else None
    ours = app_id == APPLICATION_ID or (app_id == 0 and (blank or applied is not None))
    if not ours or (applied is None and not blank):
        shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        raise _refusal(path, f"it is not a debatelab run database (its tables: {shown or 'none'})")
    newest = max(applied or {}, default=0)
    if newest > len(MIGRATIONS):
        raise _refusal(path, f"it was written by a newer debatelab (schema {newest}; this version knows "
                             f"up to {len(MIGRATIONS)}); upgrade debatelab to use it")
    unknown = [n for n, name in (applied or {}).items() if MIGRATIONS[n - 1].__name__ != name]
    if unknown:
        raise _refusal(path, f"it is not a debatelab run database (unknown migration {unknown[0]})")


def _applied(db: sqlite3.Connection) -> dict[int, str] | None:
    """Applied migrations by number, or None when ``_migrations`` is not debatelab's."""
    try:
        rows = db.execute("SELECT id, name FROM _migrations").fetchall()
    except sqlite3.OperationalError:  # another program's table of that name
        return None
    if not all(isinstance(n, int) and n >= 1 and isinstance(name, str) for n, name in rows):
        return None
    return dict(rows)


def _check_integrity(db: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    result = [row[0] for row in db.execute("PRAGMA integrity_check(1)")]
    if result != ["ok"]:
        raise _refusal(path, f"it is corrupt (SQLite integrity check: {_sqlite_message(' '.join(result))})")
    for table, column, bad_shape, label in _JSON_CHECKS:
        if table not in tables:
            continue
        bad = db.execute(f"SELECT {label} FROM {table} WHERE {column} IS NOT NULL AND "
                         f"CASE WHEN json_valid({column}) THEN {bad_shape} ELSE 1 END LIMIT 1").fetchone()
        if bad is not None:
            raise _refusal(path, f"it is corrupt ({table}.{column} of {bad[0]} is not valid JSON of the "
                                 "expected shape)")


def _sqlite_message(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("*** in database")]
    return "; ".join(lines)[:300] or "unknown error"


def _refusal(path: Path, why: str) -> DebatelabError:
    return DebatelabError(f"cannot read run database {path}: {why}")
