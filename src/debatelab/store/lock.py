"""One writer per run directory: ``flock`` on ``run_dir/.lock``.

The lock is taken before anything else a run does (the model is loaded after it), so a second
writer is refused at once. The lock file is opened without following a symlink, never
truncated and never written: whatever sits at that path, no other file can be harmed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from contextlib import suppress
from pathlib import Path

from ..errors import DebatelabError
from .errors import disk_full_error

LOCK_NAME = ".lock"
_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFLNK: "a symbolic link"}


class RunLock:
    """A held run-directory lock; :meth:`release` gives it up."""

    def __init__(self, run_dir: Path, fd: int, made_file: bool, made_dirs: list[Path]):
        self.run_dir, self.path = run_dir, run_dir / LOCK_NAME
        self._fd: int | None = fd
        self._made_file, self._made_dirs = made_file, made_dirs

    def release(self, undo: bool = False) -> None:
        """Unlock. ``undo`` (a run refused as bad input) also removes what taking the lock
        created: the lock file, and the run directory and its parents when they are empty."""
        if self._fd is None:
            return
        if undo and self._made_file:
            # Unlinked while still held: a process waiting on this file re-checks and starts over.
            with suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
        for directory in reversed(self._made_dirs if undo else []):
            try:
                directory.rmdir()
            except OSError:
                break

    def close(self) -> None:
        self.release()


def lock_run_dir(run_dir: Path) -> RunLock:
    """Create ``run_dir`` if needed and lock it; one line (exit 2) when it is in use or its lock
    file is not a plain file, one line (exit 1) when the disk is full."""
    made_dirs: list[Path] = []
    for _ in range(20):
        made_dirs += _make_dirs(run_dir)  # again on a retry: a refused run may have removed it
        opened = _open_lock_file(run_dir)
        if opened is None:
            continue
        fd, made_file = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DebatelabError(f"run directory {run_dir} is in use by another debatelab process") from None
        except OSError as exc:
            os.close(fd)
            raise _lock_error(run_dir, exc) from None
        if _still_there(fd, run_dir / LOCK_NAME):
            return RunLock(run_dir, fd, made_file, made_dirs)
        os.close(fd)  # removed or replaced while we waited for it: lock the file there now
    raise DebatelabError(f"cannot lock run directory {run_dir}: its lock file keeps being replaced")


def _make_dirs(run_dir: Path) -> list[Path]:
    """mkdir -p, returning the directories it made (so a refused run can remove them again)."""
    missing = []
    probe = run_dir
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    made = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
            made.append(directory)
        except FileExistsError:
            pass  # another process made it meanwhile
        except OSError as exc:
            raise disk_full_error(exc, run_dir) or DebatelabError(
                f"cannot create run directory {run_dir}: {exc.strerror}") from None
    if not run_dir.is_dir():
        raise DebatelabError(f"cannot create run directory {run_dir}: it exists and is not a directory")
    return made


def _open_lock_file(run_dir: Path) -> tuple[int, bool] | None:
    """(fd, whether this call created the file), or None when the file or its directory vanished
    meanwhile (try again). Never follows a symlink, never truncates."""
    path = run_dir / LOCK_NAME
    try:
        return os.open(path, _OPEN | os.O_CREAT | os.O_EXCL, 0o666), True
    except FileExistsError:
        pass
    except FileNotFoundError:
        return None  # the directory itself was removed by a refused run
    except OSError as exc:
        raise _lock_error(run_dir, exc) from None
    try:
        fd = os.open(path, _OPEN)
    except FileNotFoundError:
        return None  # removed between the two opens
    except OSError as exc:
        raise _lock_error(run_dir, exc) from None
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        raise _not_a_file(run_dir, _KINDS.get(kind, "not a regular file"))
    return fd, False


def _still_there(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _not_a_file(run_dir: Path, kind: str) -> DebatelabError:
    return DebatelabError(f"cannot lock run directory {run_dir}: {run_dir / LOCK_NAME} is {kind}, not a "
                          "regular file; remove it (debatelab never writes through it)")


def _lock_error(run_dir: Path, exc: OSError) -> DebatelabError:
    full = disk_full_error(exc, run_dir)
    if full is not None:
        return full
    if exc.errno == errno.ELOOP:
        return _not_a_file(run_dir, "a symbolic link")
    if exc.errno == errno.EISDIR:
        return _not_a_file(run_dir, "a directory")
    if exc.errno == errno.ENXIO:  # a socket (or a FIFO opened for writing only)
        return _not_a_file(run_dir, "a socket or FIFO")
    return DebatelabError(f"cannot lock run directory {run_dir}: {run_dir / LOCK_NAME}: {exc.strerror}")
