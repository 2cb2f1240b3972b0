"""A server that cannot be reached is reported as such, in one line, and stops the run (exit 1).

Two ways: nobody listens on the port (connection refused: stops at once, nothing to retry), or the
server accepts and never answers (silent: stops once a request gave up without any answer ever
having come). Before, persona generation reported both as "kept returning empty or malformed
stories". A server that answered before and then goes away still fails only the requests in
flight, as any other fault does.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import pytest
from fakes.openai_server import FakeOpenAIServer, SilentServer, unused_port

import debatelab.llm.registry as registry
from debatelab.cli import main
from debatelab.errors import EXIT_FAILED, RunFailed
from debatelab.llm.base import GenerateRequest, Message, Prompt
from debatelab.llm.openai_compat import load_openai
from debatelab.llm.options import BackendOptions

from conftest import write_config

FAST = {"timeout": 0.3, "max_retries": 1, "retry_backoff": 0.01, "retry_budget": 5}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def ask(text: str = "hi") -> GenerateRequest:
    return GenerateRequest(Prompt(messages=(Message("user", text),)), max_tokens=5)


# --- the backend -------------------------------------------------------------------------------

def test_connection_refused_stops_at_once_without_retries() -> None:
    url = f"http://127.0.0.1:{unused_port()}/v1"
    llm = load_openai("m", BackendOptions(base_url=url, max_retries=5, retry_backoff=1.0))
    started = time.monotonic()
    with pytest.raises(RunFailed) as info:
        llm.generate([ask(f"q{i}") for i in range(4)])
    assert time.monotonic() - started < 1.0  # five retries with 1 s back-off would take 31 s
    message = str(info.value)
    assert message.startswith(f"cannot reach {url}: connection refused")
    assert "\n" not in message and info.value.exit_code == EXIT_FAILED
    assert llm.usage.extra["retries"] == 0


def test_a_silent_server_stops_the_run_once_a_request_gave_up() -> None:
    with SilentServer() as silent:
        llm = load_openai("m", BackendOptions(base_url=silent.url, **FAST))
        started = time.monotonic()
        with pytest.raises(RunFailed) as info:
            llm.generate([ask(), ask("two")])
        elapsed = time.monotonic() - started
        connections = silent.connections
    message = str(info.value)
    assert message.startswith(f"cannot reach {silent.url}: no answer within 0.3 s (2 attempt(s)")
    assert "\n" not in message and "raise backend.timeout" in message
    assert 0.5 < elapsed < 3 and connections >= 2  # it was retried, then reported


def test_a_server_that_answered_and_went_away_fails_only_those_requests() -> None:
    server = FakeOpenAIServer().start()
    url = server.url
    llm = load_openai("m", BackendOptions(base_url=url, **FAST))
    try:
        [ok] = llm.generate([ask()])
    finally:
        server.stop()
    assert ok.error is None
    outs = llm.generate([ask("a"), ask("b")])  # refused now: a fault like any other, retried
    assert all(o.error is not None and o.error.startswith("gave up after 2 attempt(s)") for o in outs)
    assert llm.usage.extra["failed_requests"] == 2


def test_an_unknown_host_is_reported_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-used-0000")  # a remote host needs a key
    url = "http://no-such-host.invalid/v1"
    llm = load_openai("m", BackendOptions(base_url=url, max_retries=3, retry_backoff=1.0))
    with pytest.raises(RunFailed, match=r"^cannot reach http://no-such-host\.invalid/v1: host name not found"):
        llm.generate([ask()])


# --- through the CLI ---------------------------------------------------------------------------

def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "malformed" not in err and "empty" not in err
    return lines[0]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_cli_run_generating_personas_reports_an_unreachable_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    silent = SilentServer().__enter__() if kind == "silent" else None
    url = silent.url if silent else f"http://127.0.0.1:{unused_port()}/v1"
    try:
        # no persona bank: the run generates one first
        cfg = write_config(tmp_path / "c.yaml", model="openai:fake-model", backend={"base_url": url, **FAST})
        started = time.monotonic()
        code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
        elapsed = time.monotonic() - started
    finally:
        if silent:
            silent.__exit__(None, None, None)
    line = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_FAILED and elapsed < 10
    why = "connection refused" if kind == "refused" else r"no answer within 0\.3 s"
    assert re.match(rf"error: cannot reach {re.escape(url)}: {why}", line), line


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_cli_personas_reports_an_unreachable_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # `debatelab personas` takes no backend options: give its default options short timeouts
    monkeypatch.setattr(registry, "BackendOptions", functools.partial(BackendOptions, **FAST))
    silent = SilentServer().__enter__() if kind == "silent" else None
    url = silent.url if silent else f"http://127.0.0.1:{unused_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    out = tmp_path / "bank.jsonl"
    try:
        started = time.monotonic()
        code = main(["personas", "--model", "openai:fake-model", "--per-party", "2", "--out", str(out)])
        elapsed = time.monotonic() - started
    finally:
        if silent:
            silent.__exit__(None, None, None)
    line = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_FAILED and elapsed < 10 and not out.exists()
    why = "connection refused" if kind == "refused" else r"no answer within 0\.3 s"
    assert re.match(rf"error: cannot reach {re.escape(url)}: {why}", line), line
