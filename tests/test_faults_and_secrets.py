"""Whole runs over real HTTP against a faulty OpenAI-compatible server (issue 5, points 4 and 8).

At a 30 % fault rate (429 + Retry-After, 500, 503, resets, timeouts, malformed and truncated
bodies) every debate completes with the same results as a fault-free run. A debate whose requests
keep failing fails visibly and is retried on resume. A sentinel API key, which the server even
echoes in its error bodies, ends up in no file the run or its report wrote and in no output.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest
from fakes.openai_server import FAULT_KINDS, FakeOpenAIServer

from debatelab.errors import EXIT_FAILED
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.planning import plan_debates

from conftest import write_config

SENTINEL = "sk-SENTINEL-7f3a9c1e-do-not-leak"
EXPORTS = ("debates.csv", "turns.csv", "attitudes.csv")
FAST_RETRIES = {"timeout": 0.5, "retry_backoff": 0.01, "max_retries": 10, "retry_budget": 30, "concurrency": 6}

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, bank: Path, server: FakeOpenAIServer, name: str = "c.yaml", **backend: object) -> Path:
    return write_config(tmp_path / name, model="openai:fake-model", personas=str(bank), repetitions=4,
                        backend={"base_url": server.url, **FAST_RETRIES, **backend})


def _cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        sys.exit(main(list(argv)))
    out, err = capsys.readouterr()
    return exit_.value.code, out + err


def test_run_completes_at_30_percent_faults_like_a_fault_free_run(tmp_path, bank, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(reply="I hear you, but the data say otherwise.", seed=3) as server:
        cfg = _config(tmp_path, bank, server)
        assert _cli(capsys, "run", str(cfg), "--out", str(tmp_path / "clean"), "--quiet")[0] == 0
        server.fault_rate = 0.3
        code, output = _cli(capsys, "run", str(cfg), "--out", str(tmp_path / "faulty"), "--quiet")
        faults = dict(server.faults)
    assert code == 0, output
    assert "4/4 debates complete" in output
    assert set(faults) == set(FAULT_KINDS) and sum(faults.values()) >= 20, faults
    for name in EXPORTS:
        assert (tmp_path / "faulty" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_a_debate_whose_requests_keep_failing_fails_visibly_and_resumes(tmp_path, bank, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(reply="Fair point, yet I disagree.") as server:
        cfg = _config(tmp_path, bank, server, retry_budget=2, max_retries=3)
        seated = plan_debates(load_config(cfg), load_bank(bank), ScriptedLLM().identity())[0].agents[0].name
        server.fail_when = lambda body: "503" if seated in str(body) else None
        code, output = _cli(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
        assert code == EXIT_FAILED and "3/4 debates complete" in output and "1 debate(s) failed" in output, output
        debates = (tmp_path / "run" / "debates.csv").read_text()
        assert ",failed," in debates and "gave up after" in debates
        server.fail_when = None
        code, output = _cli(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0 and "4/4 debates complete" in output, output
    assert ",failed," not in (tmp_path / "run" / "debates.csv").read_text()


@pytest.mark.parametrize("source", ["env", "key file"])
def test_sentinel_key_is_in_no_file_or_output(tmp_path, bank, capsys, monkeypatch, source):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend: dict[str, object] = {"api_key_env": "DEBATELAB_TEST_KEY"}
    if source == "env":
        monkeypatch.setenv("DEBATELAB_TEST_KEY", SENTINEL)
    else:
        monkeypatch.delenv("DEBATELAB_TEST_KEY", raising=False)
        key_file = tmp_path / "secrets" / "key"
        key_file.parent.mkdir()
        key_file.write_text(SENTINEL + "\n")
        os.chmod(key_file, 0o600)
        backend["api_key_file"] = str(key_file)
    # The server demands the key, echoes it in every error body, faults often, and fails one
    # debate for good, so error text (which would carry the echo) reaches the database.
    with FakeOpenAIServer(reply="No.", api_key=SENTINEL, fault_rate=0.3, seed=1) as server:
        cfg = _config(tmp_path, bank, server, retry_budget=2, max_retries=3, **backend)
        seated = plan_debates(load_config(cfg), load_bank(bank), ScriptedLLM().identity())[0].agents[0].name
        server.fail_when = lambda body: "500" if seated in str(body) else None
        code, output = _cli(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
        assert code == EXIT_FAILED, output
        assert server.authorization == f"Bearer {SENTINEL}"  # the key was really used
        server.fail_when = None
        # Resume with more retries (a runtime knob): at a 30 % fault rate, 4 faults in a row on one
        # of the resumed debate's requests are likely enough to make the resume itself flaky.
        cfg = _config(tmp_path, bank, server, name="resume.yaml", retry_budget=10, max_retries=10, **backend)
        code, resumed = _cli(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
        assert code == 0, resumed
    assert _cli(capsys, "report", str(tmp_path / "run"), "--out", str(tmp_path / "report"))[0] == 0
    assert SENTINEL not in output + resumed
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "secrets"
             and SENTINEL.encode() in p.read_bytes()]
    assert leaks == []
    # The failure text, which carried the server's echo of the key, was recorded redacted, so the
    # scan above looked at real error messages.
    errors = sqlite3.connect(tmp_path / "run" / "run.sqlite").execute("SELECT error FROM failures").fetchall()
    assert errors and all("gave up after" in e and "Bearer ***" in e for (e,) in errors), errors
