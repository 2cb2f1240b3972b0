"""Errors that reach the user as one line and exit code 2 (bad input) or 1 (run failure)."""


class DebatelabError(Exception):
    """A problem the user can fix: bad config, missing file, unknown model. Exit code 2."""

    exit_code = 2


class RunFailed(DebatelabError):
    """The run itself failed after starting (e.g. a backend kept failing). Exit code 1."""

    exit_code = 1
