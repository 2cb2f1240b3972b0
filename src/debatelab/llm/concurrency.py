"""Adaptive concurrency for a remote API: back off hard when it says "too many requests".

:class:`AdaptiveLimit` is additive-increase / multiplicative-decrease (as TCP does): every 429
halves the limit, and ``limit`` successes in a row raise it by one, up to the configured maximum.
Only 429s lower it: a 5xx, timeout or reset says the server is unwell, not that we are too many,
and shrinking would only slow the run. The limit outlives a batch; :class:`Gate` enforces it
within one event loop, which is why it is made per batch (asyncio primitives belong to one loop).
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator

HISTORY = 1000  # recent limits kept for tests and progress; bounded so long runs stay flat


class AdaptiveLimit:
    def __init__(self, maximum: int):
        self.maximum = maximum
        self.limit = maximum
        self.lowest = maximum
        self.history: deque[int] = deque([maximum], maxlen=HISTORY)
        self._streak = 0  # successes since the last change

    def rate_limited(self) -> None:
        self._streak = 0
        self._set(max(1, self.limit // 2))

    def succeeded(self) -> None:
        if self.limit >= self.maximum:
            return
        self._streak += 1
        if self._streak >= self.limit:
            self._streak = 0
            self._set(self.limit + 1)

    def _set(self, value: int) -> None:
        if value != self.limit:
            self.limit = value
            self.lowest = min(self.lowest, value)
            self.history.append(value)


class Gate:
    """At most ``limit.limit`` holders at once, re-read on every change, so a lower limit takes
    effect as soon as enough holders leave (none is interrupted)."""

    def __init__(self, limit: AdaptiveLimit):
        self._limit = limit
        self._changed = asyncio.Condition()
        self.active = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.active < self._limit.limit)
            self.active += 1
        try:
            yield
        finally:
            self.active -= 1  # before the lock, so a cancellation while taking it cannot leak a slot
            async with self._changed:
                self._changed.notify_all()
