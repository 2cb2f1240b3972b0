"""The run directory's lock: whatever sits at ``run_dir/.lock``, no file is followed, truncated or
written, and a second writer is refused before its model is loaded."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from debatelab.cli import main
from debatelab.errors import DebatelabError, EXIT_BAD_INPUT
from debatelab.llm.scripted import ScriptedLLM
from debatelab.store import open_store

from conftest import write_config

OUTSIDE = b"precious bytes that belong to someone else\n"


def _run(capsys, cfg: Path, out: Path) -> tuple[int, str]:
    code = main(["run", str(cfg), "--out", str(out), "--quiet"])
    return code, capsys.readouterr().err.strip()


def _one_line(err: str, start: str) -> None:
    assert len(err.splitlines()) == 1 and err.startswith(start) and "Traceback" not in err, err


def _make_lock(kind: str, run: Path, outside: Path) -> object:
    """Put a ``kind`` of non-file at run/.lock; returns what must stay open during the test."""
    lock = run / ".lock"
    if kind == "symlink to a file":
        outside.write_bytes(OUTSIDE)
        lock.symlink_to(outside)
    elif kind == "dangling symlink":
        lock.symlink_to(outside)  # opening it for writing with O_CREAT would create `outside`
    elif kind == "directory":
        lock.mkdir()
        (lock / "keep").write_bytes(OUTSIDE)
    elif kind == "fifo":
        os.mkfifo(lock)
        # Hold the reading end, so code that opens the FIFO for writing does not hang but
        # succeeds (and anything it wrote could be read back here).
        return os.open(lock, os.O_RDONLY | os.O_NONBLOCK)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(lock))
        return server
    return None


KINDS = ["symlink to a file", "dangling symlink", "directory", "fifo", "socket"]


@pytest.mark.parametrize("kind", KINDS)
def test_lock_path_that_is_not_a_regular_file_is_refused_and_nothing_is_written(tmp_path, bank, capsys, kind):
    run, outside = tmp_path / "run", tmp_path / "outside.txt"
    run.mkdir()
    held = _make_lock(kind, run, outside)
    try:
        code, err = _run(capsys, write_config(tmp_path / "c.yaml", personas=str(bank)), run)
        assert code == EXIT_BAD_INPUT
        _one_line(err, f"error: cannot lock run directory {run}: {run / '.lock'} is ")
        assert "not a regular file" in err
        if kind == "symlink to a file":
            assert outside.read_bytes() == OUTSIDE and (run / ".lock").is_symlink()
        elif kind == "dangling symlink":
            assert not outside.exists()
        elif kind == "directory":
            assert (run / ".lock" / "keep").read_bytes() == OUTSIDE
        elif kind == "fifo":
            assert os.read(held, 1) == b""  # end of file: nothing was ever written into the FIFO
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no database was created
        with pytest.raises(DebatelabError, match="cannot lock run directory"):
            open_store(run)
    finally:
        if isinstance(held, int):
            os.close(held)
        elif held is not None:
            held.close()


def test_an_existing_lock_file_is_never_truncated(tmp_path, bank, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_bytes(OUTSIDE)
    code, _ = _run(capsys, write_config(tmp_path / "c.yaml", personas=str(bank)), run)
    assert code == 0 and (run / ".lock").read_bytes() == OUTSIDE


HOLDER = """
import fcntl, sys, time
fh = open(sys.argv[1], "a")
fcntl.flock(fh, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_before_its_model_is_loaded(tmp_path, bank, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        loads = []
        monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: loads.append(a) or ScriptedLLM())
        code, err = _run(capsys, write_config(tmp_path / "c.yaml", personas=str(bank)), run)
        assert code == EXIT_BAD_INPUT and err == f"error: run directory {run} is in use by another debatelab process"
        assert loads == []  # refused before the (possibly minutes-long) model load
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    code, _ = _run(capsys, write_config(tmp_path / "c.yaml", personas=str(bank)), run)
    assert code == 0 and loads  # once the other writer is gone, the run goes ahead


def test_model_loads_while_the_lock_is_held_and_a_failed_load_leaves_no_directory(tmp_path, bank, capsys,
                                                                                  monkeypatch):
    run = tmp_path / "new" / "run"
    seen = []

    def failing_load(*args, **kwargs):
        fd = os.open(run / ".lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the lock is already ours while the model loads
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("locked")
        finally:
            os.close(fd)
        raise DebatelabError("cannot load model x: no such model")

    monkeypatch.setattr("debatelab.executor.load_llm", failing_load)
    code, err = _run(capsys, write_config(tmp_path / "c.yaml", personas=str(bank)), run)
    assert code == EXIT_BAD_INPUT and err == "error: cannot load model x: no such model" and seen == ["locked"]
    assert not (tmp_path / "new").exists()  # bad input: what taking the lock created is gone


def test_lock_file_replaced_while_waiting_is_locked_afresh(tmp_path, monkeypatch):
    """A refused run removes the lock file it made, while a second process may already have it
    open: that process must notice and lock the new file, or two writers could run at once."""
    from debatelab.store import lock as lock_module
    from debatelab.store import lock_run_dir

    run = tmp_path / "run"
    first = lock_run_dir(run)  # made the lock file
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:  # the second process opened the old file; the first undoes and leaves
            first.release(undo=True)
        return real_flock(fd, op)

    monkeypatch.setattr(lock_module.fcntl, "flock", flock)
    second = lock_run_dir(run)
    monkeypatch.undo()
    try:
        assert len(calls) == 2  # the stale file was dropped and the new one locked
        assert os.stat(run / ".lock").st_ino == os.fstat(second._fd).st_ino
        with pytest.raises(DebatelabError, match="in use"):
            lock_run_dir(run)
    finally:
        second.release()


def test_a_caller_that_loads_its_own_model_can_lock_first(tmp_path, bank):
    """e.g. ``reproduce``, which loads one model for several run directories."""
    from debatelab.config import load_config
    from debatelab.experiment import run_experiment
    from debatelab.store import lock_run_dir

    run = tmp_path / "run"
    lock = lock_run_dir(run)
    try:
        cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
        assert run_experiment(cfg, run, llm=ScriptedLLM(), lock=lock).complete == 3
        with pytest.raises(DebatelabError, match="in use"):  # still the caller's until it lets go
            lock_run_dir(run)
    finally:
        lock.release()
    lock_run_dir(run).release()
