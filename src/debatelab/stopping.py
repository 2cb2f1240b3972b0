"""Graceful stop: SIGINT/SIGTERM end a run between commits, never in the middle of one.

While :func:`handle_signals` is active, a signal raises :class:`StopRequested` at once (an
uncommitted wave is simply redone on resume), except inside :func:`critical` sections, which the
store wraps around every transaction: there the signal is remembered and raised as soon as the
transaction has committed. Outside :func:`handle_signals` signals keep their default behaviour.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_depth = 0
_pending: int | None = None
_active = False


class StopRequested(BaseException):
    """Raised when a stop signal arrives. A BaseException, like KeyboardInterrupt, so library code
    that catches ``Exception`` (retry loops, callbacks) cannot swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _handler(signum: int, frame: Any) -> None:
    global _pending
    if _depth:
        _pending = signum
    else:
        raise StopRequested(signum)


@contextmanager
def critical() -> Iterator[None]:
    """Defer stop signals until the block has finished (used around every SQLite transaction)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None and _active:
            signum, _pending = _pending, None
            raise StopRequested(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into StopRequested for the duration of the block (main thread only;
    elsewhere, e.g. a worker thread, it does nothing and signals keep their default handling)."""
    global _active, _pending
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    _active, _pending = True, None
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _active, _pending = False, None
