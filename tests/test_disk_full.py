"""A full disk during a run: one line that names it (exit 1), a database with every committed
wave and no partial one, and once space is free the same command resumes to exports that are
byte-identical to a run that never hit a full disk.

Two ways to fill the disk: SQLite's own limit on the database size (``max_page_count``, which
fails exactly like a full disk: SQLITE_FULL), which needs nothing from the machine, and a real
tmpfs of a few MiB that another "program" fills up mid-run (skipped where mounting is not
permitted).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from debatelab import experiment, files, store
from debatelab.cli import main
from debatelab.errors import DebatelabError, EXIT_FAILED
from debatelab.store import RunStore

from conftest import write_config

EXPORTS = ("personas.jsonl", "debates.csv", "turns.csv", "attitudes.csv")
TOPICS, REPS, AGENTS, ROUNDS = 2, 4, 3, 2


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run directory) of an uninterrupted run; personas are generated, as in test_kill9."""
    root = tmp_path_factory.mktemp("clean")
    cfg = write_config(root / "c.yaml", topics=["climate_change", "racism"], repetitions=REPS, rounds=ROUNDS,
                       max_in_flight=2)
    assert main(["run", str(cfg), "--out", str(root / "run"), "--quiet"]) == 0
    return cfg, root / "run"


def _run(capsys, cfg: Path, out: Path) -> tuple[int, str]:
    code = main(["run", str(cfg), "--out", str(out), "--quiet"])
    return code, capsys.readouterr().err.strip()


def _assert_disk_full_line(code: int, err: str, run: Path) -> None:
    assert code == EXIT_FAILED, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: disk full while writing run directory {run}: "), err
    assert err.endswith("; free space and run the same command again to resume"), err


def _assert_intact(run: Path) -> int:
    """Integrity ok and no partial wave: replies 1..k in order, every survey step complete.
    Returns the number of committed turns."""
    db = sqlite3.connect(run / "run.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for (debate,) in db.execute("SELECT debate_id FROM debates").fetchall():
            turns = [r[0] for r in db.execute("SELECT iteration FROM turns WHERE debate_id = ? ORDER BY iteration",
                                              (debate,))]
            assert turns == list(range(1, len(turns) + 1)), (debate, turns)
            for iteration, n in db.execute("SELECT iteration, COUNT(*) FROM surveys WHERE debate_id = ?"
                                           " GROUP BY iteration", (debate,)):
                assert n == AGENTS, (debate, iteration, n)  # a survey step is committed whole
        return db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    finally:
        db.close()


def _assert_same_exports(run: Path, clean_run: Path) -> None:
    for name in EXPORTS:
        assert (run / name).read_bytes() == (clean_run / name).read_bytes(), name
    assert not list(run.glob(".*.tmp"))


# ---- no mount needed: SQLite reports SQLITE_FULL ---------------------------------------------
def _turns(db: sqlite3.Connection) -> int:
    try:
        return sqlite3.Connection.execute(db, "SELECT COUNT(*) FROM turns").fetchone()[0]
    except sqlite3.OperationalError:  # no turns table yet
        return 0


def test_database_full_mid_run_is_one_line_and_the_same_command_resumes(clean, tmp_path, capsys, monkeypatch):
    cfg, clean_run = clean
    run = tmp_path / "run"
    real_connect, full = sqlite3.connect, []

    class FillingUp(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT" and not full and _turns(self) >= 6:
                # From here on the database may not grow by one more page: the disk is full.
                full.append(super().execute("PRAGMA page_count").fetchone()[0])
                super().execute(f"PRAGMA max_page_count = {full[0]}")
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=FillingUp, **k))
    code, err = _run(capsys, cfg, run)
    monkeypatch.undo()  # space is free again
    _assert_disk_full_line(code, err, run)
    assert err.split(": ", 2)[2].startswith("database or disk is full;")
    turns = _assert_intact(run)
    assert 0 < turns < TOPICS * REPS * AGENTS * ROUNDS  # it struck mid-run
    assert _run(capsys, cfg, run)[0] == 0
    _assert_same_exports(run, clean_run)
    assert _assert_intact(run) == TOPICS * REPS * AGENTS * ROUNDS


def _sqlite_full(tmp_path: Path) -> sqlite3.OperationalError:
    db = sqlite3.connect(tmp_path / "small.sqlite")
    try:
        db.execute("CREATE TABLE t (x BLOB)")
        db.execute("PRAGMA max_page_count = 3")
        with pytest.raises(sqlite3.OperationalError) as caught:
            db.execute("INSERT INTO t VALUES (?)", (b"\0" * 100_000,))
    finally:
        db.close()
    return caught.value


def test_sqlite_full_is_a_full_disk_to_files_which_knows_no_sqlite(tmp_path):
    """The store recognises SQLITE_FULL (raw, made in Python, or wrapped in another error) as
    well as a full disk's OSError; debatelab.files alone knows only the OSError."""
    real = _sqlite_full(tmp_path)
    assert real.sqlite_errorcode == sqlite3.SQLITE_FULL
    try:
        try:
            raise real
        except sqlite3.Error:
            raise DebatelabError("cannot write") from None  # context kept, as RunStore does
    except DebatelabError as exc:
        wrapped = exc
    for exc in (real, sqlite3.OperationalError("database or disk is full"), wrapped):
        assert store.is_disk_full(exc), exc
        line = str(store.disk_full_error(exc, tmp_path))
        assert line == (f"disk full while writing run directory {tmp_path}: database or disk is full; "
                        "free space and run the same command again to resume")
    for exc in (sqlite3.OperationalError("database is locked"), OSError(errno.EACCES, "denied"), ValueError()):
        assert not store.is_disk_full(exc) and store.disk_full_error(exc, tmp_path) is None
    assert not files.is_disk_full(real) and files.is_disk_full(OSError(errno.EDQUOT, "quota"))
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "x.csv")
    assert str(store.disk_full_error(enospc, tmp_path)).endswith(f": {os.strerror(errno.ENOSPC)} (x.csv); "
                                                                "free space and run the same command again to resume")


# ---- a real, small filesystem ----------------------------------------------------------------
@pytest.fixture
def disk(tmp_path) -> Path:
    """A 16 MiB tmpfs (root may mount one; skip cleanly where that is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> Path:
    """Another program takes every free byte of the filesystem."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("when", ["debating", "saving personas", "exporting"])
def test_real_full_disk_is_one_line_and_the_same_command_resumes(clean, disk, capsys, monkeypatch, when):
    cfg, clean_run = clean
    run = disk / "run"
    if when == "debating":
        real, waves = RunStore.add_results, []

        def add_results(self, *args, **kwargs):
            real(self, *args, **kwargs)
            waves.append(1)
            if len(waves) == 6:
                _fill(disk)

        monkeypatch.setattr(RunStore, "add_results", add_results)
    else:
        name = {"saving personas": "save_bank", "exporting": "export_run"}[when]
        real_fn = getattr(experiment, name)
        monkeypatch.setattr(experiment, name, lambda *a, **k: (_fill(disk), real_fn(*a, **k))[1])
    code, err = _run(capsys, cfg, run)
    monkeypatch.undo()
    _assert_disk_full_line(code, err, run)
    turns = _assert_intact(run)
    if when == "debating":
        assert 0 < turns < TOPICS * REPS * AGENTS * ROUNDS
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*.csv"))  # nothing half-written
    (disk / "filler").unlink()  # space is free again
    assert _run(capsys, cfg, run)[0] == 0
    _assert_same_exports(run, clean_run)
