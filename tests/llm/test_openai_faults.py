"""The OpenAI-compatible backend under API faults and with secrets, over real HTTP on 127.0.0.1.

The fake server injects 429s, 5xx, resets, hangs, malformed and truncated bodies, and echoes the
Authorization header in its error texts, so every check that the key stays hidden is a real one.
"""

from __future__ import annotations

import email.utils
import math
import os
import signal
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from fakes.openai_server import FAULT_KINDS, Body, FakeOpenAIServer

from debatelab.errors import DebatelabError, EXIT_FAILED, RunFailed
from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.concurrency import AdaptiveLimit
from debatelab.llm.openai_compat import OpenAICompatLLM, load_openai
from debatelab.llm.options import BackendOptions
from debatelab.llm.retry import parse_retry_after

KEY = "sk-SENTINEL-never-print-me-0451"
SCALE = tuple(str(i) for i in range(11))
FAST = {"timeout": 0.4, "retry_backoff": 0.02}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make_llm(server: FakeOpenAIServer, **options: Any) -> OpenAICompatLLM:
    return load_openai("fake-model", BackendOptions(base_url=server.url, **{**FAST, **options}))


def ask(text: str) -> GenerateRequest:
    return GenerateRequest(Prompt(messages=(Message("user", text),)), max_tokens=20)


def rate(text: str) -> ScoreRequest:
    return ScoreRequest(Prompt(messages=(Message("user", text),)), options=SCALE)


def content(body: Body) -> str:
    return str(body["messages"][-1]["content"])


class Overtime(BaseException):
    """Not an Exception, so no retry logic can swallow it."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (rather than hang) if the block overruns: a broken budget would otherwise wait forever."""
    def expire(signum: int, frame: object) -> None:
        raise Overtime(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_redacted(error: str | None) -> None:
    # The server quoted the key back; it must arrive masked, on one line.
    assert error is not None and KEY not in error and "\n" not in error


# --- a run under mixed faults --------------------------------------------------------------------

def test_every_request_succeeds_at_a_30_percent_mixed_fault_rate() -> None:
    n, max_retries = 60, 10
    with FakeOpenAIServer(fault_rate=0.3, fault_kinds=FAULT_KINDS, seed=0) as server:
        llm = make_llm(server, max_retries=max_retries)
        started = time.monotonic()
        with deadline(60):
            texts = llm.generate([ask(f"question {i}") for i in range(n)])
            scores = llm.score_options([rate(f"rate {i}") for i in range(n)])
        elapsed = time.monotonic() - started
        received, faults = server.received, dict(server.faults)
    assert [t.text for t in texts] == [f"echo: question {i}" for i in range(n)]
    assert all(t.error is None for t in texts) and all(s.error is None for s in scores)
    assert all(s.source == "logprobs" and max(s.logprobs) == s.logprobs[7] > -math.inf for s in scores)
    assert set(faults) == set(FAULT_KINDS), faults  # every kind of fault really happened
    assert 0.2 < sum(faults.values()) / len(received) < 0.4
    # Each fault cost exactly one retry, and nothing else was sent.
    assert len(received) == 2 * n + llm.usage.extra["retries"] <= 2 * n * (max_retries + 1)
    assert llm.usage.extra["retries"] == sum(faults.values())
    assert llm.usage.extra["rate_limited"] == faults["429"] and llm.usage.extra["failed_requests"] == 0
    assert elapsed < 20


# --- a request that keeps failing ----------------------------------------------------------------

@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_request_that_keeps_failing_errors_within_its_budget(server: FakeOpenAIServer, kind: str) -> None:
    server.fail_when = lambda body: kind if "doomed" in content(body) else None
    budget = 0.5
    llm = make_llm(server, max_retries=100, retry_budget=budget, timeout=0.2)
    started = time.monotonic()
    with deadline(10):
        outs = llm.generate([ask("fine 0"), ask("doomed"), ask("fine 2")])
        [good, bad] = llm.score_options([rate("fine"), rate("doomed")])
    elapsed = time.monotonic() - started
    assert [o.text for o in outs] == ["echo: fine 0", "", "echo: fine 2"]
    assert outs[0].error is None and outs[2].error is None and good.error is None
    for failed in (outs[1], bad):
        assert_redacted(failed.error)
        assert failed.error.startswith("gave up after")
    assert bad.logprobs == ()
    doomed_attempts = sum("doomed" in content(b) for b in server.bodies)
    assert doomed_attempts >= 4  # it was retried, not dropped...
    assert elapsed < 2 * budget + 0.8  # ...and each of the two gave up within its budget
    assert llm.usage.extra["failed_requests"] == 2


def test_a_failing_request_stops_after_max_retries(server: FakeOpenAIServer) -> None:
    server.fail_when = lambda body: 503 if "doomed" in content(body) else None
    llm = make_llm(server, max_retries=3)
    [bad, good] = llm.generate([ask("doomed"), ask("fine")])
    assert bad.error is not None and bad.error.startswith("gave up after 4 attempt(s)") and "503" in bad.error
    assert "Bearer ***" in bad.error  # the server echoed the key; we masked it
    assert good.text == "echo: fine"
    assert sum("doomed" in content(b) for b in server.bodies) == 4


@pytest.mark.parametrize("status", [400, 422])
def test_a_rejected_request_fails_alone_without_retries(server: FakeOpenAIServer, status: int) -> None:
    server.fail_when = lambda body: status if "bad" in content(body) else None
    llm = make_llm(server, max_retries=5, top_logprobs=0)
    outs = llm.generate([ask("fine"), ask("bad"), ask("fine too")])
    assert [o.error is None for o in outs] == [True, False, True]
    assert_redacted(outs[1].error)
    assert outs[1].error.startswith("rejected:") and str(status) in outs[1].error
    assert sum("bad" in content(b) for b in server.bodies) == 1


def test_a_200_with_the_wrong_shape_is_retried(server: FakeOpenAIServer) -> None:
    server.fail_next(200, count=2, body={"object": "surprise"})
    llm = make_llm(server, max_retries=3)
    [out] = llm.generate([ask("hi")])
    assert out.text == "echo: hi" and len(server.received) == 3


# --- Retry-After and the budget ------------------------------------------------------------------

@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(server: FakeOpenAIServer, form: str) -> None:
    # An HTTP date has whole seconds, so "now + 2 s" means a wait of 1 to 2 s.
    value = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    server.fail_next(429, retry_after=value)
    llm = make_llm(server, max_retries=2)
    [out] = llm.generate([ask("hi")])
    first, second = server.received
    assert out.text == "echo: hi" and second.at - first.at >= 0.95


def test_never_sleeps_past_the_budget(server: FakeOpenAIServer) -> None:
    server.fail_next(429, retry_after="30")
    llm = make_llm(server, max_retries=5, retry_budget=1.0)
    started = time.monotonic()
    with deadline(10):
        [out] = llm.generate([ask("hi")])
    assert time.monotonic() - started < 0.5 and len(server.received) == 1
    assert out.error is not None and "gave up after 1 attempt(s)" in out.error and "429" in out.error


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": email.utils.formatdate(now + 3, usegmt=True)}, now=now) == 3.0
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "-4"}) == 0.0


# --- adaptive concurrency ------------------------------------------------------------------------

def test_aimd_limit_halves_on_429_and_grows_back_slowly() -> None:
    limit = AdaptiveLimit(8)
    for _ in range(4):
        limit.rate_limited()
    assert limit.limit == limit.lowest == 1
    limit.succeeded()
    assert limit.limit == 2
    for _ in range(2 + 3 + 4 + 5 + 6 + 7 + 50):
        limit.succeeded()
    assert limit.limit == 8 and list(limit.history) == [8, 4, 2, 1, 2, 3, 4, 5, 6, 7, 8]


def test_a_429_storm_lowers_the_limit_and_what_the_server_sees(server: FakeOpenAIServer) -> None:
    server.delay = 0.05
    server.fail_next(429, count=8)
    llm = make_llm(server, concurrency=8, max_retries=6)
    assert all(o.error is None for o in llm.generate([ask(f"q{i}") for i in range(8)]))
    assert llm.limit.lowest == 1 and llm.usage.extra["rate_limited"] == 8
    assert llm.limit.limit < 8 and llm.usage.extra["concurrency"] == llm.limit.limit
    # The lower limit carries into the next batch: the server sees fewer requests at once.
    server.reset_stats()
    server.delay = 0.2
    assert all(o.error is None for o in llm.generate([ask(f"r{i}") for i in range(8)]))
    assert server.max_in_flight < 8


@pytest.mark.parametrize("kind", ["500", "503", "reset", "timeout"])
def test_server_errors_never_lower_the_limit(server: FakeOpenAIServer, kind: str) -> None:
    server.delay = 0.05
    server.fail_next(kind, count=8)
    llm = make_llm(server, concurrency=8, max_retries=3, timeout=0.3)
    assert all(o.error is None for o in llm.generate([ask(f"q{i}") for i in range(8)]))
    # every failed request retried; on a loaded machine a retry may time out again (0.3 s), never fewer
    retries = llm.usage.extra["retries"]
    assert list(llm.limit.history) == [8] and (retries == 8 if kind != "timeout" else retries >= 8)
    server.reset_stats()
    server.delay = 0.2
    assert all(o.error is None for o in llm.generate([ask(f"r{i}") for i in range(8)]))
    assert server.max_in_flight == 8


# --- configuration errors stop the run -----------------------------------------------------------

def test_401_stops_the_run_with_one_line_and_no_key() -> None:
    with FakeOpenAIServer(api_key="the-right-key") as server:
        llm = make_llm(server, max_retries=5)
        with pytest.raises(RunFailed) as info:
            llm.generate([ask(f"q{i}") for i in range(5)])
        seen = server.received
    message = str(info.value)
    assert "401" in message and "check the API key" in message and "Bearer ***" in message
    assert KEY not in message and "\n" not in message and info.value.exit_code == EXIT_FAILED
    assert KEY not in "".join(traceback.format_exception(info.value))
    assert all(r.authorization == f"Bearer {KEY}" for r in seen) and len(seen) <= 5  # no retries


def test_404_stops_the_run(server: FakeOpenAIServer) -> None:
    llm = load_openai("fake-model", BackendOptions(base_url=server.url + "/nowhere", **FAST))
    with pytest.raises(RunFailed, match="404.*check the model name and base_url") as info:
        llm.score_options([rate("x")])
    assert KEY not in str(info.value)


# --- where the key comes from --------------------------------------------------------------------

def _key_file(tmp_path: Path, mode: int, key: str = "sk-from-file-9876") -> Path:
    path = tmp_path / "openai.key"
    path.write_text(key + "\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o604])
def test_key_file_open_to_group_or_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    path = _key_file(tmp_path, mode)
    with pytest.raises(DebatelabError) as info:
        load_openai("m", BackendOptions(base_url="https://api.example.com/v1", api_key_file=str(path)))
    message = str(info.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message and "\n" not in message
    assert "sk-from-file" not in message


def test_key_file_with_mode_600_is_used(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    llm = make_llm(server, api_key_file=str(_key_file(tmp_path, 0o600)))
    [out] = llm.generate([ask("hi")])
    assert out.text == "echo: hi" and server.authorization == "Bearer sk-from-file-9876"
    assert "sk-from-file" not in repr(llm.identity()) + repr(llm.usage)


def test_environment_key_wins_over_the_file(server: FakeOpenAIServer, tmp_path: Path) -> None:
    llm = make_llm(server, api_key_file=str(_key_file(tmp_path, 0o600)))
    llm.generate([ask("hi")])
    assert server.authorization == f"Bearer {KEY}"


def test_missing_key_file_and_missing_key_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    remote = "https://api.example.com/v1"
    with pytest.raises(DebatelabError, match="API key file not found: .*nope.key"):
        load_openai("m", BackendOptions(base_url=remote, api_key_file=str(tmp_path / "nope.key")))
    with pytest.raises(DebatelabError, match=r"^missing API key: set \$OPENAI_API_KEY or api_key_file"):
        load_openai("m", BackendOptions(base_url=remote))


def test_the_key_appears_in_no_result_error_or_usage() -> None:
    kinds = ("429", "500", "503", "reset", "malformed", "truncated")
    with FakeOpenAIServer(fail_when=lambda body: kinds[int(content(body)[-1]) % len(kinds)]) as server:
        llm = make_llm(server, max_retries=1)
        outs = llm.generate([ask(f"q{i}") for i in range(len(kinds))])
    assert all(o.error is not None for o in outs)
    for out in outs:
        assert_redacted(out.error)
    assert sum("Bearer ***" in (o.error or "") for o in outs) == 3  # the three HTTP errors echoed it
    assert KEY not in repr(outs) + repr(llm.usage) + repr(llm.identity())
