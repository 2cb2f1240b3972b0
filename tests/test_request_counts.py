"""Retries, rate limits and failed requests in the run summary and the run's meta, summed over
its sessions (``debatelab/request_counts.py``): a whole run over real HTTP against the faulty
local server, then a resume; and the arithmetic on its own."""

from __future__ import annotations

import json

import pytest
from fakes.openai_server import FakeOpenAIServer

import debatelab
from debatelab.config import load_config
from debatelab.errors import EXIT_FAILED
from debatelab.llm.base import REQUEST_COUNTERS
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.planning import plan_debates
from debatelab.request_counts import add_session, request_lines, since

from conftest import run_cli, write_config

pytestmark = pytest.mark.slow
BACKEND = {"timeout": 5.0, "retry_backoff": 0.01, "max_retries": 3, "retry_budget": 30, "concurrency": 4}


def test_a_runs_retries_rate_limits_and_failures_are_said_and_kept(tmp_path, bank, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(reply="Fair point, yet I disagree.") as server:
        cfg = write_config(tmp_path / "c.yaml", model="openai:fake-model", personas=str(bank), repetitions=2,
                           backend={"base_url": server.url, **BACKEND})
        seated = plan_debates(load_config(cfg), load_bank(bank), ScriptedLLM().identity())[0].agents[0].name
        server.fail_when = lambda body: "503" if seated in str(body) else None  # one debate fails for good
        server.fail_next("429", 3)
        code, output = run_cli(capsys, "run", str(cfg), "--out", str(tmp_path / "run"))
        faults = sum(server.faults.values())
        server.fail_when = None
        resumed, again = run_cli(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == EXIT_FAILED and resumed == 0, output + again
    first = debatelab.load(tmp_path / "run").meta["requests"][""]
    assert first["model"] == "openai:fake-model" and first["sessions"] == 2
    assert first["rate_limited"] == 3 and first["failed_requests"] >= 1
    # Every fault was retried except each failed request's last attempt; the resume met none.
    assert first["retries"] == faults - first["failed_requests"]
    assert first["survey_top_k"] + first["survey_exact"] + first["survey_fallbacks"] > 0
    said = [ln for ln in output.splitlines() if ln.startswith("requests (openai:fake-model)")]
    assert len(said) == 1 and "3 rate-limited (429)" in said[0] and "failed for good" in said[0], output
    assert "over 2 sessions" in again and f"{first['retries']} retries" in again, again
    attitudes = (tmp_path / "run" / "attitudes.csv").read_text().splitlines()
    assert "source" in attitudes[0].split(",") and all(",logprobs," in row or ",top_k," in row
                                                       for row in attitudes[1:]), attitudes[:3]


def test_a_session_is_added_to_the_runs_totals() -> None:
    before = {"": {"model": "openai:m", "calls": 2, **{n: 1 for n in REQUEST_COUNTERS}}}
    now = {"": {"model": "openai:m", "calls": 5, **{n: 4 for n in REQUEST_COUNTERS}}}
    session = since(now, before)
    assert session[""]["calls"] == 3 and all(session[""][n] == 3 for n in REQUEST_COUNTERS)
    totals = add_session(None, session)
    totals = add_session(json.dumps(totals), session)
    assert totals[""]["sessions"] == 2 and totals[""]["retries"] == 6
    idle = {"": {"model": "openai:m", "calls": 0, **{n: 0 for n in REQUEST_COUNTERS}}}
    assert add_session(None, idle) == {}  # a resume that sent nothing is no session
    [line] = request_lines(totals)
    assert line.startswith("requests (openai:m over 2 sessions): 6 retries, 6 rate-limited (429), 6 failed")
    assert request_lines(None) == [] and request_lines({"x": "not a dict"}) == []
