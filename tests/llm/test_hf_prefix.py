"""Prompt-prefix reuse in the transformers backend gives what computing every prompt in full gives."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from tiny_model import load_tiny
import torch
from tiny_model import same_weights as twin

from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.hf import HFLLM
from debatelab.llm.hf_kv import prefix_cache_budget, supports_prefix_cache
from debatelab.llm.options import BackendOptions

SCALE = tuple(str(i) for i in range(11))
NAMES = ("Alice", "Bob", "Carol")


@pytest.fixture(scope="module")
def cached(tiny_model_dir: Path) -> Iterator[HFLLM]:
    for llm in load_tiny(tiny_model_dir):
        assert llm.prefix_cache is not None
        yield llm


def prompt(me: int, history: list[str], task: str, prefix: str) -> Prompt:
    user = f"You are {NAMES[me]}, in a debate about climate change.\n" + "\n\n".join(history) + f"\n\n{task}"
    background = f"You are {NAMES[me]}. " + "You care about your town and your family. " * (2 + me)
    return Prompt(messages=(Message("system", background), Message("user", user)), assistant_prefix=prefix)


def debate(llm: HFLLM, rounds: int = 2, max_tokens: int = 12) -> tuple[list[list[float]], list[str]]:
    """Surveys of all three agents, then each speaks in turn; returns every score and reply."""
    history: list[str] = []
    scores, replies = [], []
    for r in range(rounds):
        surveys = [ScoreRequest(prompt(i, history, "Rate it from 0 to 10.", "Rating: "), SCALE) for i in range(3)]
        scores += [list(s.logprobs) for s in llm.score_options(surveys)]
        for me in range(3):
            req = GenerateRequest(prompt(me, history, "Write your next reply.", f"{NAMES[me]}:"),
                                  temperature=0.0 if me == 2 else 1.0, max_tokens=max_tokens, seed=10 * r + me)
            reply = llm.generate([req])[0]
            replies.append(reply.text)
            history.append(f"{NAMES[me]}: {reply.text}")
    return scores, replies


def test_a_debate_with_prefix_reuse_equals_one_without(cached: HFLLM) -> None:
    cached.prefix_cache.clear()
    stats = cached.prefix_cache.stats
    reused, seen = stats.reused_tokens, stats.prompt_tokens
    scores, replies = debate(cached)
    plain_scores, plain_replies = debate(twin(cached, prefix_cache_mb=0))
    assert replies == plain_replies
    for a, b in zip(scores, plain_scores):
        assert a == pytest.approx(b, abs=1e-4)
    # and the cache was really used: a good part of the prompts came from it
    assert (stats.reused_tokens - reused) > 0.3 * (stats.prompt_tokens - seen)


def test_one_batch_mixing_hits_of_different_lengths_and_misses(cached: HFLLM) -> None:
    history = ["Alice: We must act.", "Bob: It costs too much.", "Carol: Both of you have a point."]
    warm = [GenerateRequest(prompt(i, history[:i], "Write your next reply.", "x:"), temperature=0.0, max_tokens=4)
            for i in range(3)]
    cached.prefix_cache.clear()
    cached.generate(warm)  # three entries with different lengths
    later = [GenerateRequest(prompt(i, history, "Write your next reply.", "x:"), temperature=1.0, max_tokens=10, seed=i)
             for i in range(3)]
    fresh = GenerateRequest(Prompt(text="Dave: In 2024 the report said"), temperature=0.0, max_tokens=10)
    requests = [later[0], fresh, later[1], later[2]]
    hits = cached.prefix_cache.stats.hits
    for size in (4, 2):
        got = twin(cached, batch_size=size)
        got.prefix_cache = cached.prefix_cache  # share the warm entries
        assert got.generate(requests) == twin(cached, prefix_cache_mb=0).generate(requests)
    assert cached.prefix_cache.stats.hits >= hits + 2 * 3


def test_scores_with_reuse_match_scores_without(cached: HFLLM) -> None:
    history = ["Alice: Carbon tax now.", "Bob: No new taxes."]
    cached.prefix_cache.clear()
    first = [ScoreRequest(prompt(i, history[:1], "Rate it from 0 to 10.", "Rating: "), SCALE) for i in range(3)]
    cached.score_options(first)
    then = [ScoreRequest(prompt(i, history, "Rate it from 0 to 10.", "Rating: "), SCALE) for i in range(3)]
    plain = twin(cached, prefix_cache_mb=0).score_options(then)
    reused = cached.prefix_cache.stats.reused_tokens
    for a, b in zip(cached.score_options(then), plain):
        assert list(a.logprobs) == pytest.approx(list(b.logprobs), abs=1e-4)
    assert cached.prefix_cache.stats.reused_tokens > reused


def test_budget_is_the_option_or_a_third_of_available_memory(cached: HFLLM) -> None:
    assert twin(cached, prefix_cache_mb=0).prefix_cache is None
    assert twin(cached, prefix_cache_mb=3).prefix_cache.budget == 3 * 2**20
    auto = prefix_cache_budget(BackendOptions(), torch.device("cpu"))
    with open("/proc/meminfo") as fh:
        total = int(next(line for line in fh if line.startswith("MemTotal")).split()[1]) * 1024
    assert 0 < auto < total / 3


def test_sliding_window_models_never_reuse(tmp_path: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    assert not supports_prefix_cache(MistralForCausalLM(config))
    config.sliding_window = None
    assert supports_prefix_cache(MistralForCausalLM(config))


def test_tree_scoring_with_eager_attention_equals_sdpa(cached: HFLLM) -> None:
    requests = [ScoreRequest(prompt(i, ["Alice: We must act."], "Rate it from 0 to 10.", "Rating: "), SCALE)
                for i in range(3)] + [ScoreRequest(Prompt(text="Bob:"), ("10", "1", "0", " yes"))]
    sdpa = twin(cached, prefix_cache_mb=0).score_options(requests)
    cached.model.set_attn_implementation("eager")
    try:
        eager = twin(cached, prefix_cache_mb=0).score_options(requests)
    finally:
        cached.model.set_attn_implementation("sdpa")
    for a, b in zip(eager, sdpa):
        assert list(a.logprobs) == pytest.approx(list(b.logprobs), abs=1e-4)


def test_the_cache_is_reached_through_the_llm_contract(cached: HFLLM) -> None:
    """cache_stats / clear_cache / without_cache (what the bench uses) over ``prefix_cache``."""
    store = cached.prefix_cache
    req = GenerateRequest(prompt(0, [], "Write your next reply.", "Alice:"), temperature=0.0, max_tokens=2)
    cached.generate([req])
    assert cached.cache_stats() == store.stats.as_dict() and store.entries
    cached.clear_cache()
    assert not store.entries and cached.cache_stats()["lookups"] == store.stats.lookups  # stats stay
    lookups = store.stats.lookups
    with cached.without_cache():
        assert cached.prefix_cache is None and cached.cache_stats() is None
        cached.generate([req])
    assert cached.prefix_cache is store and store.stats.lookups == lookups
    plain = twin(cached, prefix_cache_mb=0)
    assert plain.cache_stats() is None and plain.clear_cache() is None


def test_a_finished_runs_prompts_leave_the_cache(cached: HFLLM, tmp_path: Path) -> None:
    """What a debate leaves in the store is released when it finishes: after a run the store
    holds nothing (it would otherwise keep every finished debate until full)."""
    from debatelab.config import load_config
    from debatelab.experiment import run_experiment

    from conftest import make_bank, write_config

    cfg = load_config(write_config(tmp_path / "c.yaml", model="hf:tiny", personas=str(make_bank(tmp_path / "b.jsonl")),
                                   repetitions=4, rounds=2, max_in_flight=2, reply={"max_tokens": 6}))
    store = cached.prefix_cache
    store.clear()
    released, reused = store.stats.released, store.stats.reused_tokens
    assert run_experiment(cfg, tmp_path / "run", llm=cached).complete == 4
    assert store.stats.reused_tokens > reused  # the cache was in use throughout
    assert store.stats.released - released >= 4 * 3  # at least each agent's last survey prompt
    assert not store.entries and store.used == 0
