"""Whole experiments on the real (non-scripted) backend paths: a tiny local HF model, and an
OpenAI-compatible server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fakes.openai_server import FakeOpenAIServer

from debatelab.config import load_config
from debatelab.experiment import run_experiment
from debatelab.survey import parse_rating

from conftest import write_config


def _attitudes(run: Path) -> list[dict[str, str]]:
    with (run / "attitudes.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_experiment_over_openai_compatible_http(tmp_path, bank, monkeypatch, api):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    def reply(body: dict) -> str:  # a greedy survey answer of 7; prose otherwise
        return "7" if "Reply with the number only" in str(body) else "I see it differently, and here is why."

    with FakeOpenAIServer(reply=reply) as server:
        cfg = load_config(write_config(tmp_path / "c.yaml", model="openai:fake-model", personas=str(bank),
                                       backend={"base_url": server.url, "api": api, "concurrency": 4}))
        summary = run_experiment(cfg, tmp_path / "run", llm=None)
        paths = set(server.paths)
    assert summary.complete == 3
    assert paths == {"/v1/chat/completions" if api == "chat" else "/v1/completions"}
    rows = _attitudes(tmp_path / "run")
    assert len(rows) == 3 * 3 * 3 and all(r["score"] == "7" and r["valid"] == "True" for r in rows)
    # the same survey also holds the server's distribution, from true logprobs
    assert all(r["source"] == "logprobs" and 0 <= float(r["expected_score"]) <= 10 for r in rows)


def test_experiment_on_tiny_local_hf_model(tmp_path, bank, tiny_model_dir):
    model = tiny_model_dir
    cfg = load_config(write_config(tmp_path / "c.yaml", model=f"hf:{model}", personas=str(bank),
                                   agents=["republican", "democrat", "default", "democrat"], rounds=1,
                                   reply={"max_tokens": 8}, backend={"threads": 1}))
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary.complete == 3
    rows = _attitudes(tmp_path / "run")
    assert len(rows) == 3 * 4 * 2
    # a random model's greedy answers are mostly not numbers: recorded as invalid, never guessed
    assert all(r["valid"] == str(parse_rating(r["raw"]) is not None) for r in rows)
    assert all(r["source"] == "logprobs" and r["expected_score"] != "" for r in rows)
    assert all(abs(sum(float(r[f"p{i}"]) for i in range(11)) - 1) < 1e-6 for r in rows)
