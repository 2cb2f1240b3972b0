"""`debatelab run --dry-run`: request counts equal what a real run issues; tokens and cost are sane."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import pytest

from debatelab.errors import EXIT_BAD_INPUT
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.dryrun import CountingLLM, Tally, TokenRules, dry_run, filler
from debatelab.estimate import PRICES, estimate_run, format_estimate, token_counter
from debatelab.experiment import run_experiment
from debatelab.llm.base import Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest
from debatelab.llm.registry import load_llm
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.prompts import SURVEY_OPTIONS, SURVEY_PREFIX

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
    import debatelab.experiment  # noqa: F401  (so its names are patched too)

    # Wherever a module holds run_experiment or load_llm (they move between modules), it fails.
    for module in [m for name, m in sys.modules.items() if name.split(".")[0] == "debatelab"]:
        for name in ("run_experiment", "load_llm"):
            if name in vars(module):
                monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("a dry run must run and load nothing"))
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
    assert code == EXIT_BAD_INPUT and err.startswith("error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


class CountingScripted(ScriptedLLM):
    """The scripted backend, counting calls and requests as :class:`debatelab.dryrun.Tally` does."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name, keep_history=False)
        self.tally = Tally()

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        self.tally.generate_calls += 1
        self.tally.generate_requests += len(requests)
        return super().generate(requests)

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        self.tally.score_calls += 1
        self.tally.score_requests += len(requests)
        return super().score_options(requests)

    def calls(self) -> tuple[int, int, int, int]:
        return self.tally.as_tuple()[:4]


BLUE = {"role": "democrat", "model": "scripted:blue"}


@pytest.mark.parametrize("method", ["both", "generate", "logprobs"])
@pytest.mark.parametrize("seats", ["one model", "per-agent model"])
@pytest.mark.parametrize("personas", ["bank", "generated"])
def test_dry_run_makes_exactly_the_calls_of_a_scripted_run(tmp_path, bank, method, seats, personas):
    """Per model: the same generate and score calls with the same numbers of requests; more
    debates (5) than in flight (2), so admission into later waves counts too."""
    agents = ["republican", BLUE if seats == "per-agent model" else "democrat", "default"]
    config = _config(tmp_path, bank, agents=agents, rounds=2, repetitions=5, max_in_flight=2,
                     survey={"method": method}, personas=str(bank) if personas == "bank" else None)
    dry = dry_run(config, TokenRules(token_counter(config)[0]))
    llm, blue = CountingScripted(), CountingScripted("blue")
    run_experiment(config, tmp_path / "run", llm=llm,
                   seat_llms={"scripted:blue": blue} if seats == "per-agent model" else None)
    assert (dry.persona_calls + dry.models[""]).as_tuple()[:4] == llm.calls()
    assert dry.models.get("scripted:blue", Tally()).as_tuple()[:4] == blue.calls()
    assert set(dry.models) == ({"", "scripted:blue"} if seats == "per-agent model" else {""})
    assert dry.persona_calls.generate_calls == (personas == "generated")
    assert (blue.calls()[0] > 0) == (seats == "per-agent model")
    est = estimate_run(config)
    total = dry.total().as_tuple()
    assert (est.generate_calls, est.generate_requests, est.score_calls, est.score_requests) == total[:4]
    assert (est.prompt_tokens, est.completion_tokens) == total[4:]


def test_dry_run_seats_the_personas_a_run_seats(tmp_path, bank):
    """Generated personas get their ids, names and parties from the real generation code."""
    config = _config(tmp_path, bank, personas=None, repetitions=2)
    dry = dry_run(config, TokenRules(token_counter(config)[0]))
    run_experiment(config, tmp_path / "run", llm=ScriptedLLM())
    real = load_bank(tmp_path / "run" / "personas.jsonl")
    assert [(p.id, p.name, p.party) for p in dry.bank] == [(p.id, p.name, p.party) for p in real]
    assert {p.background for p in dry.bank} == {filler(config.persona_generation.max_tokens)}


def test_echo_scoring_sends_each_option_and_the_bare_prompt():
    request = ScoreRequest(Prompt(text="Rating: "), SURVEY_OPTIONS)
    for echo, sends, completion in [(False, 1, 1), (True, 12, 0)]:
        llm = CountingLLM(TokenRules(lambda prompt: 10, score_echo=echo, score_completion=completion))
        (scores,) = llm.score_options([request])
        assert llm.tally == Tally(score_calls=1, score_requests=1, prompt_tokens=10 * sends,
                                  completion_tokens=completion)
        assert sum(math.exp(lp) for lp in scores.logprobs) == pytest.approx(1)  # uniform, valid


def test_api_token_rules(tmp_path, bank):
    """On legacy completions with echo each scored survey prompt goes out 12 times and samples
    nothing; on chat it goes out once and samples one token (whose logprobs are read)."""
    config = _config(tmp_path, bank, model="openai:gpt-4o", survey={"method": "logprobs"})
    chat = estimate_run(config)
    legacy = estimate_run(config.model_copy(update={
        "model": "openai:gpt-3.5-turbo-instruct", "backend": config.backend.model_copy(update={"api": "completions"})}))
    count = token_counter(config)[0]
    surveys_only = dry_run(config, TokenRules(lambda p: count(p) if p.assistant_prefix == SURVEY_PREFIX else 0))
    assert legacy.score_requests == chat.score_requests
    assert legacy.prompt_tokens - chat.prompt_tokens == 11 * surveys_only.total().prompt_tokens > 0
    assert chat.completion_tokens == chat.reply_requests * 96 + chat.survey_requests
    assert legacy.completion_tokens == legacy.reply_requests * 96


def test_a_paper_preset_estimates_fast():
    import time

    config = load_config(Path(__file__).parents[1] / "experiments" / "paper" / "fig3_three_way.yaml")
    config = config.model_copy(update={"model": "scripted"})  # characters / 4, as for API models
    start = time.process_time()
    est = estimate_run(config)
    assert time.process_time() - start < 5
    assert est.debates == 160 and est.reply_requests == 160 * 9 and est.persona_requests == 80
