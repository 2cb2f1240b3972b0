"""Which errors come from the run database: the store is the only user of SQLite, so it alone
recognises SQLite's errors, for the CLI's last-resort handler and for the one full-disk line
(:mod:`debatelab.files` recognises a full disk's OSError; these add SQLite's)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .. import files
from ..errors import RunFailed

_FULL = "database or disk is full"  # SQLite's own text for SQLITE_FULL


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of the run database (SQLite) itself."""
    return isinstance(exc, sqlite3.Error)


def _database_full_detail(exc: BaseException) -> str | None:
    """What to say when ``exc`` is SQLite reporting a full disk (SQLITE_FULL, also for a size
    limit such as ``max_page_count``); None for any other error."""
    # An error raised by SQLite carries its result code; one made in Python (a test's) has none.
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.Error) and (code == sqlite3.SQLITE_FULL or _FULL in str(exc)):
        return _FULL
    return None



def is_disk_full(exc: BaseException) -> bool:
    """Whether a full disk is behind ``exc``: an OSError's, or the run database's."""
    return files.is_disk_full(exc, _database_full_detail)


def disk_full_error(exc: BaseException, run_dir: Path) -> RunFailed | None:
    """The one line for a full disk behind ``exc`` (see :func:`is_disk_full`), or None."""
    return files.disk_full_error(exc, run_dir, _database_full_detail)
