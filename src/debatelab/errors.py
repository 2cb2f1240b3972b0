"""Errors that reach the user as one line and exit code 2 (bad input) or 1 (run failure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DebatelabError(Exception):
    """A problem the user can fix: bad config, missing file, unknown model. Exit code 2."""

    exit_code = 2


class RunFailed(DebatelabError):
    """The run itself failed after starting (e.g. a backend kept failing). Exit code 1."""

    exit_code = 1


class RunInterrupted(DebatelabError):
    """SIGINT/SIGTERM stopped a run after its last commit. Exit code 128 + signal, as shells do."""

    def __init__(self, signum: int, run_dir: Path):
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after the last commit; everything committed is kept in "
                         f"{run_dir}; run the same command again to resume")
        self.exit_code = 128 + signum


def read_text(path: Path, what: str) -> str:
    """Read a user-supplied text file, turning every way it can fail into one clear line."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DebatelabError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DebatelabError(f"{what} is a directory, not a file: {path}") from None
    except UnicodeDecodeError:
        raise DebatelabError(f"{what} is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise DebatelabError(f"cannot read {what} {path}: {exc.strerror}") from None


def describe_yaml_error(exc: Exception) -> str:
    """'<problem> (line N)' from a PyYAML error, on one line."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1})" if mark is not None else problem


def read_yaml(path: Path, what: str) -> object:
    """Parse a user-supplied YAML file; unreadable or invalid files become one clear line."""
    import yaml

    try:
        return yaml.safe_load(read_text(path, what))
    except yaml.YAMLError as exc:
        raise DebatelabError(f"{what} {path} is not valid YAML: {describe_yaml_error(exc)}") from None


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a user-supplied JSONL file; a line that is
    not a JSON object becomes one clear line. Splits on "\n" only: U+2028 and friends may sit
    inside JSON strings, where str.splitlines() would cut them."""
    rows = []
    for number, line in enumerate(read_text(path, what).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DebatelabError(f"{what} {path} line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DebatelabError(f"{what} {path} line {number} is not a JSON object")
        rows.append((number, row))
    return rows
