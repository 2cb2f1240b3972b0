"""Retrying one HTTP request: which failures deserve another try, how long to wait, when to stop.

The SDK's own retries are off, so every attempt passes through here: each is counted, each holds a
concurrency slot only while it is on the wire (never while backing off), and the whole request is
bounded by an attempt count *and* a time budget. A request that runs out of either raises
:class:`GaveUp`; errors not worth retrying (400, 401, ...) propagate unchanged for the caller to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncContextManager, Awaitable, Callable, Mapping, TypeVar

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")

# Request timeout, conflict and rate limit; every 5xx is retried as well.
RETRY_STATUSES = frozenset({408, 409, 429})
MAX_WAIT = 60.0  # longest exponential back-off step; Retry-After may ask for more (within the budget)


class MalformedResponse(Exception):
    """A 2xx answer whose body was not the JSON we expect (e.g. a proxy's error page): retried."""


class GaveUp(Exception):
    """A retryable failure that outlasted the attempts or the time budget."""

    def __init__(self, cause: BaseException, attempts: int, elapsed: float):
        super().__init__(f"gave up after {attempts} attempt(s) in {elapsed:.1f}s")
        self.cause = cause
        self.attempts = attempts
        self.elapsed = elapsed


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException, openai: Any) -> bool:
    """Worth another attempt: overload, server errors, lost connections, timeouts, garbled bodies."""
    status = status_of(exc)
    if status is not None:
        return status in RETRY_STATUSES or status >= 500
    # APIConnectionError covers resets, refused connections, truncated bodies and (as
    # APITimeoutError) timeouts; the SDK lets json's decode error through for a non-JSON 200.
    retryable = (openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError,
                 MalformedResponse, asyncio.TimeoutError)
    return isinstance(exc, retryable)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        try:
            if value is not None:
                return max(0.0, float(value) / scale)
        except ValueError:
            continue  # not a number: maybe an HTTP date
    parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))


def retry_after_of(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    return parse_retry_after(getattr(response, "headers", None))


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    budget: float  # seconds for all attempts and waits of one request
    backoff: float  # first wait; doubles per retry
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def wait(self, retries_done: int, retry_after: float | None) -> float:
        """Jittered exponential back-off, but never sooner than the server's Retry-After."""
        step = min(MAX_WAIT, self.backoff * 2 ** min(max(retries_done - 1, 0), 32))  # no float overflow
        # Half-to-full jitter: spreads a burst of failures apart without ever retrying at once.
        jittered = step * (0.5 + 0.5 * self.rng.random())
        return jittered if retry_after is None else max(jittered, retry_after)


async def with_retries(
    attempt: Callable[[float], Awaitable[T]],
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
    *,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
    slot: Callable[[], AsyncContextManager[object]] = contextlib.nullcontext,
) -> T:
    """Run ``attempt(seconds_left)`` inside ``slot()`` until it succeeds, fails for good, or the
    policy runs out. Time spent queueing for a slot is not charged to the budget: in a big batch
    the last request may wait long for its turn without having failed at all."""
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt  # an [openai] extra

    started, queued, attempts = time.monotonic(), 0.0, 0

    def left() -> float:
        return max(0.0, policy.budget - (time.monotonic() - started - queued))

    async def bounded() -> T:
        nonlocal queued, attempts
        asked = time.monotonic()
        async with slot():
            queued += time.monotonic() - asked
            attempts += 1
            # The HTTP client's timeout is per read; this caps the attempt as a whole.
            return await asyncio.wait_for(attempt(left()), timeout=left())

    def past_budget(state: RetryCallState) -> bool:
        return state.upcoming_sleep >= left()  # never sleep into (or past) the end of the budget

    retrying = AsyncRetrying(
        retry=retry_if_exception(transient),
        stop=stop_after_attempt(policy.max_retries + 1) | past_budget,
        wait=lambda state: policy.wait(state.attempt_number, retry_after_of(_failure(state))),
        before_sleep=lambda state: on_retry(_failure(state)),
        sleep=asyncio.sleep,
        reraise=True,
    )
    try:
        return await retrying(bounded)
    except Exception as exc:
        if not transient(exc):
            raise
        raise GaveUp(exc, attempts, time.monotonic() - started - queued) from None


def _failure(state: RetryCallState) -> BaseException:
    assert state.outcome is not None and state.outcome.failed
    exc = state.outcome.exception()
    assert exc is not None
    return exc
