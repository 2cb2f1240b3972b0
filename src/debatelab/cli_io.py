"""The CLI's edges: one-line messages, bounded argument types, early checks of output paths and
descriptions of OS errors, so every command fails on one line before it does any work."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Callable

from .config import SEED_RANGE
from .errors import DebatelabError


# Bounds of the flags that go through no config (bench, personas); the config's own bounds
# live in debatelab.config and the backend's in debatelab.llm.options, with their fields.
MAX_SURVEY_PROMPTS = 10_000
MAX_MESSAGE = 1_000
"""Longest error line; user text quoted in a message (a path, a key) is cut short beyond it."""
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines() cuts
# Path errors the user can fix (exit 2); other OS errors (disk full, I/O error) fail the run (exit 1).
BAD_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                    errno.ENAMETOOLONG, errno.EEXIST, errno.ELOOP, errno.EINVAL, errno.ENXIO, errno.ENODEV}


def one_line(message: str) -> str:
    """A message as one printable line: line breaks become spaces, other control characters are
    escaped, and an overlong message is cut at MAX_MESSAGE characters."""
    out = []
    for ch in message:
        if ch in _LINE_BREAKS:
            out.append(" ")
        elif ch != "\t" and not ch.isprintable() and not ch.isspace():
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    text = "".join(out).strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def say(prefix: str, message: str) -> None:
    print(one_line(f"{prefix}: {message}"), file=sys.stderr)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage over several lines; we want one
        say("error", f"{message} (see {self.prog} --help)")  # prog: "debatelab" or "debatelab run"
        raise SystemExit(2)


def whole(text: str, minimum: int, maximum: int | None) -> int:
    try:
        value = int(text)
    except ValueError:  # also more than 4,300 digits
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"expected a whole number, got {shown!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {'at least 1' if minimum == 1 else f'{minimum:,} or more'}, "
                                         f"got {value}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum:,}, got {value:,}")
    return value


def positive(text: str) -> int:
    return whole(text, 1, None)


def upto(maximum: int, minimum: int = 1) -> Callable[[str], int]:
    """A whole number in [minimum, maximum]."""
    def parse(text: str) -> int:
        return whole(text, minimum, maximum)

    parse.__name__ = f"whole number {minimum}..{maximum}"
    return parse


seed = upto(SEED_RANGE - 1, -SEED_RANGE)


def check_output_file(path: Path, what: str, *, make_parents: bool = False) -> None:
    """Fail early, on one line, for an output file that cannot be written: a directory, a parent
    that is a file or (unless ``make_parents``) missing, a folder in which no file can be created."""
    if path.is_dir():
        raise DebatelabError(f"cannot write {what} {path}: it is a directory")
    _check_writable_folder(path, what, path.parent, make_parents)


def check_output_folder(path: Path, what: str) -> None:
    """The same for an output folder, which the command creates (with its parents) if missing."""
    if path.exists() and not path.is_dir():
        raise DebatelabError(f"cannot write {what} {path}: it is a file, not a folder")
    _check_writable_folder(path, what, path, True)


def _check_writable_folder(path: Path, what: str, folder: Path, make_parents: bool) -> None:
    while make_parents and not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the writer creates the missing folders below this one
    if not folder.is_dir():
        why = "is not a directory" if folder.exists() else "does not exist"
        raise DebatelabError(f"cannot write {what} {path}: folder {folder} {why}")
    import tempfile

    try:  # a trial file: permissions alone miss read-only mounts, /proc, and root's view of them
        fd, trial = tempfile.mkstemp(dir=folder, prefix=".debatelab-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(trial)
    except OSError as exc:
        raise DebatelabError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def describe_os_error(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        text += f": {os.fsdecode(exc.filename) if isinstance(exc.filename, bytes) else exc.filename}"
    if exc.filename2 is not None:
        text += f" -> {exc.filename2}"
    return text


def silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
