"""`debatelab run --dry-run`: request counts equal what a real run issues; tokens and cost are sane."""

from __future__ import annotations

from pathlib import Path

import pytest

from debatelab.cli import main
from debatelab.config import load_config
from debatelab.estimate import PRICES, estimate_run, format_estimate
from debatelab.experiment import run_experiment
from debatelab.llm.registry import load_llm
from debatelab.llm.scripted import ScriptedLLM

from conftest import write_config

CASES = {
    "bank": {},
    "fewer in flight than debates": {"max_in_flight": 2, "repetitions": 5},
    "generate surveys": {"survey": {"method": "generate"}, "rounds": 1},
    "distribution-only surveys": {"survey": {"method": "logprobs"}, "rounds": 1},
    "two agents, three topics": {"agents": ["democrat", "default"], "topics": ["climate_change", "racism", "gun_violence"]},
    "generated bank": {"personas": None, "repetitions": 2},
}


def _config(tmp_path: Path, bank: Path, **values: object):
    values = {"personas": str(bank), **values}
    if values["personas"] is None:
        del values["personas"]
    return load_config(write_config(tmp_path / "c.yaml", **values))


@pytest.mark.parametrize("case", CASES)
def test_counts_equal_what_a_scripted_run_issues(tmp_path, bank, case):
    config = _config(tmp_path, bank, **CASES[case])
    est = estimate_run(config)
    llm = ScriptedLLM()  # constructed directly: it records every batch
    run_experiment(config, tmp_path / "run", llm=llm)
    assert est.generate_calls == len(llm.generate_calls)
    assert est.generate_requests == sum(len(batch) for batch in llm.generate_calls)
    assert est.score_calls == len(llm.score_calls)
    assert est.score_requests == sum(len(batch) for batch in llm.score_calls)
    assert est.debates == config.repetitions * len(config.topics)
    assert est.reply_requests == est.debates * config.rounds * len(config.agents)
    assert est.survey_requests == est.debates * (config.rounds + 1) * len(config.agents)
    assert est.persona_requests == (2 * config.repetitions if case == "generated bank" else 0)
    replies_and_stories = est.reply_requests * config.reply.max_tokens + est.persona_requests * 200
    assert est.completion_tokens >= replies_and_stories and est.prompt_tokens > est.completion_tokens


def test_token_estimate_within_a_sane_factor_of_a_real_run(tmp_path, bank, tiny_model_dir):
    model = tiny_model_dir
    config = _config(tmp_path, bank, model=f"hf:{model}", rounds=2, reply={"max_tokens": 12},
                     backend={"threads": 1, "dtype": "float32"})
    est = estimate_run(config)
    assert est.token_method.startswith("counted with the tokenizer")
    llm = load_llm(config.model, config.backend)
    run_experiment(config, tmp_path / "run", llm=llm)
    assert 0.6 < llm.usage.prompt_tokens / est.prompt_tokens <= 1.25
    assert 0 < llm.usage.completion_tokens <= est.completion_tokens
    # characters / 4 (what API models get) lands in the same range
    chars = estimate_run(config.model_copy(update={"model": "openai:gpt-4o"}))
    assert chars.token_method.startswith("estimated as characters / 4")
    assert 0.5 < chars.prompt_tokens / est.prompt_tokens < 2


def test_history_growth_assumes_every_reply_uses_max_tokens(tmp_path, bank):
    short = estimate_run(_config(tmp_path, bank, reply={"max_tokens": 10}))
    long = estimate_run(_config(tmp_path, bank, reply={"max_tokens": 110}))
    # every reply prompt sees (iteration - 1) earlier replies and every survey sees `iteration` of
    # them, twice: the default "both" method sends each survey prompt to generate and to score
    per_debate = sum(range(6)) + 2 * 3 * (0 + 3 + 6)
    assert long.prompt_tokens - short.prompt_tokens == 100 * per_debate * short.debates
    assert long.completion_tokens - short.completion_tokens == 100 * short.reply_requests


def test_dry_run_creates_no_run_directory_and_loads_no_model(tmp_path, bank, capsys, monkeypatch):
    import debatelab.experiment as experiment

    for name in ("run_experiment", "load_llm"):
        monkeypatch.setattr(experiment, name, lambda *a, **k: pytest.fail("a dry run must run and load nothing"))
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank))
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert not (tmp_path / "run").exists()
    assert "debates: 3" in out and "9 generate calls with 45 requests" in out and "3 score calls with 27 requests" in out
    assert "cost: no price known" in out


def test_cost_for_a_priced_api_model(tmp_path, bank, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # no key is needed to estimate
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), model="openai:gpt-4o-mini-2024-07-18")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    est = estimate_run(load_config(cfg))
    low, high = PRICES["gpt-4o-mini"]
    assert est.price == (low, high)
    assert est.cost_usd == pytest.approx((est.prompt_tokens * low + est.completion_tokens * high) / 1e6)
    # per survey: the greedy answer (survey.max_tokens = 8) and 1 logprob token
    assert est.completion_tokens == est.reply_requests * 96 + est.survey_requests * (8 + 1)
    assert f"cost: about ${est.cost_usd:,.2f}" in out and "as of" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, backend, needle", [
    ("openai:gpt-4o", {"base_url": "http://127.0.0.1:8000/v1"}, "served at"),
    ("openai:my-finetune", {}, "no price known for 'my-finetune'"),
    ("scripted", {}, "no price known for 'scripted'"),
])
def test_no_price_known(tmp_path, bank, monkeypatch, model, backend, needle):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    est = estimate_run(_config(tmp_path, bank, model=model, backend=backend))
    assert est.cost_usd is None and needle in est.price_note
    assert f"cost: {est.price_note}" in format_estimate(est, 96)


def test_dry_run_of_an_infeasible_config_is_one_line_error(tmp_path, bank, capsys):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=500)
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()

