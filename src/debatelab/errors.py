"""Errors that reach the user as one line, and the exit codes they carry."""

from __future__ import annotations

from pathlib import Path

EXIT_FAILED = 1
"""The run or command failed after starting (a backend kept failing, a full disk, a bug)."""
EXIT_BAD_INPUT = 2
"""Bad input the user can fix: a config, a file, a model name. Nothing was changed."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT), as shells report it."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away (128 + SIGPIPE), e.g. ``debatelab topics | head -1``."""


class DebatelabError(Exception):
    """A problem the user can fix: bad config, missing file, unknown model. Exit code 2."""

    exit_code = EXIT_BAD_INPUT

    @property
    def bad_input(self) -> bool:
        """Whether this is bad input (exit 2): the command left everything as it found it."""
        return self.exit_code == EXIT_BAD_INPUT


class RunFailed(DebatelabError):
    """The run itself failed after starting (e.g. a backend kept failing). Exit code 1."""

    exit_code = EXIT_FAILED


class RunInterrupted(DebatelabError):
    """SIGINT/SIGTERM stopped a run after its last commit. Exit code 128 + signal, as shells do."""

    def __init__(self, signum: int, run_dir: Path):
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after the last commit; everything committed is kept in "
                         f"{run_dir}; run the same command again to resume")
        self.exit_code = 128 + signum


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
