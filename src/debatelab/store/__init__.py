"""The run database: the only package that knows its tables or touches SQLite.

- :mod:`.schema`: what a run database is (append-only migrations, its marker) and the read-only
  checks made before anything writes to one or reads one;
- :mod:`.writer`: :class:`RunStore`, the one writer of a run (migrations applied on open, every
  wave committed atomically, resume from what is committed);
- :mod:`.read`: typed rows (the CSV exports' row sets) and a run's transcript;
- :mod:`.stances`: a stance judge's scores of the replies (``score-stance``);
- :mod:`.views`: the run as pandas DataFrames for analysis (imported on its own: it needs pandas);
- :mod:`.lock`: one writer per run directory;
- :mod:`.errors`: which errors are the database's (and its full-disk error, for
  :mod:`debatelab.files`).
"""

from __future__ import annotations

from .errors import disk_full_error, is_database_error, is_disk_full
from .lock import LOCK_NAME, RunLock, lock_run_dir
from .read import AttitudeRow, DebateRow, TurnRow, attitude_rows, debate_rows, read_transcript, turn_rows
from .stances import (ReplyToJudge, StanceRow, add_stances, bind_judge, judged_count, stance_rows,
                      unscored_replies)
from .schema import APPLICATION_ID, DB_NAME, MIGRATIONS, read_run_database, verify
from .writer import RunStore, check_claimable, open_store

__all__ = ["APPLICATION_ID", "DB_NAME", "LOCK_NAME", "MIGRATIONS", "AttitudeRow", "DebateRow", "RunLock",
           "ReplyToJudge", "RunStore", "StanceRow", "TurnRow", "add_stances", "bind_judge", "judged_count", "attitude_rows", "check_claimable", "debate_rows", "disk_full_error",
           "is_database_error", "is_disk_full", "lock_run_dir", "open_store", "read_run_database", "read_transcript",
           "stance_rows", "turn_rows", "unscored_replies", "verify"]
