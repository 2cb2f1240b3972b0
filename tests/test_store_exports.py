"""Exports are replaced atomically and together: a failing export (here a full disk, reported by
write() or only by fsync()) never leaves a half-written CSV, nor a new debates.csv beside an old
turns.csv, in place of the good set."""

from __future__ import annotations

import errno
import os

import pytest

from debatelab.errors import EXIT_FAILED
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.experiment import run_experiment
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.planning import plan_debates

from conftest import write_config
from test_reliability import FlakyLLM

CSVS = ("debates.csv", "turns.csv", "attitudes.csv")
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _is_temp_of(fd: int, name: str) -> bool:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}.")


class _FullAfter:
    """A text file on a disk that fills up after ``room`` characters."""

    def __init__(self, fh, room: int):
        self._fh, self._room = fh, room

    def write(self, text: str) -> int:
        if len(text) > self._room:
            self._fh.write(text[:self._room])
            self._fh.flush()  # the half that fitted really is in the temp file
            raise ENOSPC
        self._room -= len(text)
        return self._fh.write(text)

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self) -> "_FullAfter":
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _full_at_write(monkeypatch, name: str) -> None:
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullAfter(real(fd, *a, **k), 2000)
                        if _is_temp_of(fd, name) else real(fd, *a, **k))


def _full_at_fsync(monkeypatch, name: str) -> None:
    """A filesystem with delayed allocation (or NFS) that reports the full disk only at fsync."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if _is_temp_of(fd, name):
            raise ENOSPC
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("fault", [_full_at_write, _full_at_fsync])
def test_failed_export_leaves_the_previous_set_of_exports(tmp_path, bank, capsys, monkeypatch, fault):
    cfg_path = write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=4)
    cfg = load_config(cfg_path)
    run_experiment(cfg, tmp_path / "clean", llm=ScriptedLLM())
    first = plan_debates(cfg, load_bank(bank), ScriptedLLM().identity())[0]
    run = tmp_path / "run"
    monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: FlakyLLM({first.agents[0].name}))
    assert main(["run", str(cfg_path), "--out", str(run), "--quiet"]) == EXIT_FAILED  # 3 of 4 debates complete
    before = {name: (run / name).read_bytes() for name in CSVS}

    monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: ScriptedLLM())
    fault(monkeypatch, "turns.csv")  # written after debates.csv and attitudes.csv
    capsys.readouterr()
    assert main(["run", str(cfg_path), "--out", str(run), "--quiet"]) == EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: disk full while writing run directory {run}: "), err
    assert {name: (run / name).read_bytes() for name in CSVS} == before  # all old, none half or new
    assert not list(run.glob(".*.tmp"))

    monkeypatch.undo()
    monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: ScriptedLLM())
    assert main(["run", str(cfg_path), "--out", str(run), "--quiet"]) == 0
    for name in ("turns.csv", "attitudes.csv"):  # debates.csv also keeps the failure's history
        assert (run / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert (run / "debates.csv").read_text().count(",complete,") == 4


def test_atomic_files_replace_all_or_none(tmp_path):
    from debatelab.files import atomic_files

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(OSError):
        with atomic_files() as files:
            with files.open(a) as fh:
                fh.write("new a")
            with files.open(b) as fh:
                fh.write("new b, half")
                raise ENOSPC
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]
    with atomic_files() as files:
        for path in (a, b):
            with files.open(path) as fh:
                fh.write(f"new {path.stem}")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert oct(a.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
