"""Atomic file output: readers see the old file or the complete new one, never half of one.
Also: recognising a full disk, wherever in a run it shows up, so it becomes one clear line
(:mod:`debatelab.store`, which owns SQLite, adds the run database's own full-disk error)."""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import DebatelabError, RunFailed

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a quota is as full as a disk, and freed the same way

FullDetail = Callable[[BaseException], str | None]
"""Says what to report when an error means a full disk, or None when it does not."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFiles:
    """Files written to temp files beside their targets; :func:`atomic_files` renames them all
    into place only once every one of them is complete."""

    def __init__(self) -> None:
        self._ready: list[tuple[str, Path]] = []

    @contextmanager
    def open(self, path: Path, newline: str | None = None, binary: bool = False) -> Iterator[IO[Any]]:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline=newline)) as fh:
                yield fh
                fh.flush()
                # Some filesystems report a full disk only at fsync (delayed allocation, NFS):
                # it must fail here, before the good file is replaced, and a rename after a
                # power cut must not expose a file whose data never reached the disk.
                os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._ready.append((tmp, path))

    def _commit(self) -> None:
        mode = 0o666 & ~_umask()  # mkstemp makes 0600; results are meant to be shared
        while self._ready:
            tmp, path = self._ready[0]
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            self._ready.pop(0)
            _fsync_dir(path.parent)

    def _discard(self) -> None:
        for tmp, _ in self._ready:
            Path(tmp).unlink(missing_ok=True)
        self._ready.clear()


@contextmanager
def atomic_files() -> Iterator[AtomicFiles]:
    """Replace several files together (e.g. a run's CSV exports): if writing any of them fails,
    none is replaced, so the set on disk never mixes old and new files."""
    files = AtomicFiles()
    try:
        yield files
        files._commit()
    finally:
        files._discard()  # what a failure left unrenamed


@contextmanager
def atomic_open(path: Path, newline: str | None = None) -> Iterator[IO[str]]:
    """Write text to a temp file beside ``path`` and rename it over ``path`` on success."""
    with atomic_files() as files, files.open(path, newline) as fh:
        yield fh


def json_text(payload: Any) -> str:
    """Strict JSON (indented, one trailing newline): non-finite floats become null, numpy scalars
    plain numbers, anything else unknown its string, so strict parsers (jq, browsers) read it."""
    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    def plain(value: Any) -> Any:  # numpy scalars register as numbers, so numpy need not be imported
        if isinstance(value, numbers.Integral):
            return int(value)
        return finite(float(value)) if isinstance(value, numbers.Real) else str(value)

    return json.dumps(finite(payload), indent=2, allow_nan=False, default=plain) + "\n"


def write_json(path: Path, payload: Any) -> None:
    """:func:`json_text` of ``payload`` to ``path``, atomically; one line if it cannot be written."""
    try:
        with atomic_open(path) as fh:
            fh.write(json_text(payload))
    except OSError as exc:
        raise DebatelabError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` (a rendered figure) to ``path``, atomically; one line if it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_files() as files, files.open(path, binary=True) as fh:
            fh.write(data)
    except OSError as exc:
        raise DebatelabError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse fsync on a directory, which is fine.
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _full_detail(exc: BaseException, also: FullDetail | None) -> str | None:
    """What a full disk behind ``exc`` said (an ENOSPC/EDQUOT OSError, or an error ``also``
    recognises, such as SQLITE_FULL), also when it is wrapped in another error (code that turns
    an OSError into a one-line error keeps it as ``__context__``); None when none is behind it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return os.strerror(current.errno) + (f" ({current.filename})" if current.filename else "")
        text = also(current) if also is not None else None
        if text is not None:
            return text
        current = current.__cause__ or current.__context__
    return None


def is_disk_full(exc: BaseException, also: FullDetail | None = None) -> bool:
    return _full_detail(exc, also) is not None


def disk_full_error(exc: BaseException, run_dir: Path, also: FullDetail | None = None) -> RunFailed | None:
    """The one line for a full disk (exit 1: nothing is wrong with the input), or None."""
    detail = _full_detail(exc, also)
    if detail is None:
        return None
    return RunFailed(f"disk full while writing run directory {run_dir}: {detail}; "
                     "free space and run the same command again to resume")
