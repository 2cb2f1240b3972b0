"""The bench roofline: a perfect prefix cache on hand-made sequences, FLOP counts against a hand
computation on a tiny random Llama (and against forward hooks on its linear layers), key/value
bytes read by decoding, the peak and bandwidth measures, and a society step on the tiny model
(the bench modes run in tests/test_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_model import load_tiny

from debatelab.bench import peak, roofline
from debatelab.bench.roofline import (ModelShape, PrefixSet, Work, bounded, measure_bandwidth, measure_peak, merged,
                                      model_shape, tracer_for)
from debatelab.bench.society import SocietyBenchSettings, format_society_report, run_society_bench
from debatelab.bench.workload import OneAtATime, Recorder
from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.scripted import ScriptedLLM
from debatelab.llm.wrappers import keeps_mixed_calls
from debatelab.prompts import SURVEY_OPTIONS

HIDDEN, INTER, LAYERS, HEADS, HEAD_DIM = 64, 128, 2, 4, 16  # tests/tiny_model.py
KV_HEADS, DTYPE_BYTES = 4, 4  # no grouped-query attention; float32
KV_TOKEN_BYTES = 2 * LAYERS * KV_HEADS * HEAD_DIM * DTYPE_BYTES


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    yield from load_tiny(tiny_model_dir)


@pytest.fixture
def small_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak shapes, bandwidth tensor and repeats small enough for a test (the real measures take a
    few seconds); patched where they live, :mod:`debatelab.bench.peak`."""
    monkeypatch.setattr(peak, "SQUARES", (128,))
    monkeypatch.setattr(peak, "MLP_ROWS", 64)
    monkeypatch.setattr(peak, "SHAPE_BUDGET_S", 0.02)
    monkeypatch.setattr(peak, "BANDWIDTH_BYTES", 2**20)
    monkeypatch.setattr(peak, "BANDWIDTH_BUDGET_S", 0.02)


def _shape(vocab: int = 10) -> ModelShape:
    """Grouped-query attention: 3 query heads, 1 key/value head; 2-byte elements."""
    return ModelShape(linear_params=100, lm_head_params=vocab, layers=2, heads=3, head_dim=5, hidden=8, intermediate=16,
                      kv_heads=1, dtype_bytes=2)


def _keys(start: int, end: int) -> int:
    """Sum over positions p in [start, end) of the keys each attends to (p + 1), by counting."""
    return sum(p + 1 for p in range(start, end))


# ---- the perfect prefix cache ----------------------------------------------------------------
def test_prefix_set_finds_the_longest_prefix_with_any_earlier_sequence() -> None:
    seen = PrefixSet()
    assert seen.common([1, 2, 3]) == 0
    seen.insert([1, 2, 3, 4])
    seen.insert([5, 6, 7])
    assert seen.common([1, 2, 3, 9]) == 3
    assert seen.common([1, 2, 3, 4, 5]) == 4
    assert seen.common([1, 2, 5]) == 2  # shares with the earlier, not the latest, sequence
    assert seen.common([5, 6, 7, 8]) == 3 and seen.common([6, 7]) == 0  # prefixes only, not substrings
    assert seen.common([1, 2]) == 2  # a prefix of an earlier sequence
    assert len(seen) == 7  # one hash per distinct prefix


def test_needed_prompt_tokens_and_generated_tokens_in_the_cache() -> None:
    work = Work(_shape())
    work.prompt([1, 2, 3, 4])
    work.prompt([9, 9])
    work.prompt([1, 2, 3, 7, 8])  # 3 shared with the first prompt, not the latest
    assert (work.prompt_tokens, work.needed_prompt_tokens) == (11, 4 + 2 + 2)
    work.generated([9, 9], [5, 6, 7], 3)
    work.prompt([9, 9, 5, 6, 7, 1])  # the reply is cached after its prompt
    assert work.needed_prompt_tokens == 8 + 1
    work.prompt([1, 2, 3, 4])  # seen in full: its last token is still computed, for its logits
    assert work.needed_prompt_tokens == 8 + 1 + 1
    assert work.as_dict()["reuse_bound_share"] == pytest.approx(1 - 10 / (4 + 2 + 5 + 6 + 4))


def test_flops_of_a_prompt_a_generation_and_an_option_tree_by_hand() -> None:
    shape = _shape(vocab=10)
    work = Work(shape)
    work.prompt([1, 2, 3])
    work.prompt([1, 2, 3, 4, 5])  # positions 3 and 4
    attn = 4 * 2 * 3 * 5  # layers x heads x head_dim x 4
    assert work.linear_flops == 2 * 100 * (3 + 2)
    assert work.attention_flops == attn * (_keys(0, 3) + _keys(3, 5))
    assert work.lm_head_flops == 0
    before = (work.linear_flops, work.attention_flops)
    work.generated([1, 2, 3, 4, 5], [6, 7, 8, 9], 4)  # 4 logits, 3 tokens fed back at positions 5..7
    assert work.lm_head_flops == 2 * 10 * 4
    assert work.linear_flops - before[0] == 2 * 100 * 3
    assert work.attention_flops - before[1] == attn * _keys(5, 8)
    assert work.generated_tokens == 4
    tree = Work(shape)
    tree.options([0] * 7, [0, 0, 1])  # logits at the context's end and at 3 nodes; nodes at 7, 7, 8
    assert tree.lm_head_flops == 2 * 10 * 4 and tree.linear_flops == 2 * 100 * 3
    assert tree.attention_flops == attn * (8 + 8 + 9)
    assert tree.option_nodes == 3


def test_a_generation_of_one_token_feeds_nothing_back() -> None:
    work = Work(_shape())
    work.generated([1, 2], [3], 1)
    assert work.linear_flops == 0 and work.attention_flops == 0 and work.lm_head_flops == 2 * 10


def test_efficiency_arithmetic_and_merge() -> None:
    shape = ModelShape(linear_params=500, lm_head_params=0, layers=1, heads=1, head_dim=1, hidden=1, intermediate=1,
                       kv_heads=1, dtype_bytes=4)
    work = Work(shape)
    work.prompt(list(range(1000)))  # 1e6 linear FLOPs + 4 x 500500 attention FLOPs
    flops = 2 * 500 * 1000 + 4 * 500_500
    r = bounded(work, peak_gflops=0.5, measured_s=0.01)
    assert r["needed_gflop"] == pytest.approx(flops / 1e9)
    assert r["bound_s"] == pytest.approx(flops / 0.5e9)
    assert r["efficiency"] == pytest.approx(flops / 0.5e9 / 0.01)
    later = work.fork()
    later.prompt(list(range(1001)))  # the cache is shared: one token
    assert later.needed_prompt_tokens == 1 and merged([work, later]).needed_prompt_tokens == 1001
    assert bounded(later, 1.0, 0.0)["efficiency"] is None


# ---- counts on a real model --------------------------------------------------------------------
def test_model_shape_counts_the_linear_layers_of_the_tiny_llama(tiny) -> None:
    shape = model_shape(tiny.model)
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER  # q, k, v, o; gate, up, down
    vocab = tiny.model.config.vocab_size
    assert shape == ModelShape(LAYERS * per_layer, HIDDEN * vocab, LAYERS, HEADS, HEAD_DIM, HIDDEN, INTER,
                               KV_HEADS, DTYPE_BYTES)
    assert shape.kv_token_bytes == KV_TOKEN_BYTES == 1024 and shape.as_dict()["kv_token_bytes"] == KV_TOKEN_BYTES
    # the same linear FLOPs as the model's own nn.Linear calls over a full forward (lm_head apart)
    counted = []
    head = tiny.model.get_output_embeddings()
    hooks = [m.register_forward_hook(lambda mod, inp, out: counted.append(2 * mod.in_features * mod.out_features
                                                                         * inp[0].shape[:-1].numel()))
             for m in tiny.model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    try:
        with torch.inference_mode():
            tiny.model(input_ids=torch.arange(1, 12)[None], logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    assert sum(counted) == shape.layer_flops(0, 11)[0]


def test_tracer_counts_generation_and_option_scoring_by_hand(tiny) -> None:
    tracer = tracer_for(tiny)
    assert tracer is not None and tracer_for(ScriptedLLM()) is None
    prompt = Prompt(messages=(Message("system", "You are Alice."), Message("user", "Say something about taxes.")))
    request = GenerateRequest(prompt, temperature=0.0, max_tokens=5, seed=1)
    with tiny.without_cache():
        out = tiny.generate([request])
    tracer.generate([request], out)
    n, length = out[0].completion_tokens, len(tiny.encode(prompt))
    vocab, linear = tiny.model.config.vocab_size, LAYERS * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER)
    attn = 4 * LAYERS * HEADS * HEAD_DIM
    w = tracer.work
    assert n > 1 and w.generated_tokens == n and w.needed_prompt_tokens == length
    assert w.lm_head_flops == 2 * HIDDEN * vocab * n
    assert w.linear_flops == 2 * linear * (length + n - 1)
    assert w.attention_flops == attn * _keys(0, length + n - 1)
    # decoding reads: positions length .. length + n - 2, each its p + 1 cached positions; prefill reads none
    assert w.kv_read_bytes == sum((p + 1) * KV_TOKEN_BYTES for p in range(length, length + n - 1))
    survey = ScoreRequest(Prompt(messages=prompt.messages, assistant_prefix="Rating: "), SURVEY_OPTIONS)
    scores = tiny.score_options([survey])
    fresh = tracer_for(tiny)  # its own cache: the whole context is needed
    fresh.score([survey], scores)
    tree, length = tiny._option_tree(survey), len(tiny.encode(survey.prompt))
    s = fresh.work
    assert s.needed_prompt_tokens == length and s.option_nodes == len(tree.tokens) >= 11
    assert s.lm_head_flops == 2 * HIDDEN * vocab * (1 + len(tree.tokens))
    assert s.linear_flops == 2 * linear * (length + len(tree.tokens))
    assert s.attention_flops == attn * (_keys(0, length) + sum(length + d + 1 for d in tree.depths))
    assert s.kv_read_bytes == KV_TOKEN_BYTES * sum(length + d + 1 for d in tree.depths)
    before = w.needed_prompt_tokens
    tracer.score([survey], scores)  # after the generation: the system and user turns are cached
    assert 0 < w.needed_prompt_tokens - before < length


def test_wrappers_trace_without_changing_what_they_send(tiny) -> None:
    assert keeps_mixed_calls(Recorder(ScriptedLLM()))  # generate and its mixed call both overridden
    one, wave = tracer_for(tiny), tracer_for(tiny)
    prompt = Prompt(text="Hello there")
    reqs = [GenerateRequest(prompt, temperature=0.0, max_tokens=3, seed=i) for i in range(2)]
    a = OneAtATime(tiny, one).generate(reqs)
    b = Recorder(tiny, wave).generate_mixed([(tiny, reqs)])[0]  # traced once, not per view too
    assert [c.text for c in a] == [c.text for c in b]
    assert one.work.prompts == wave.work.prompts == 2
    # the same prompt twice: in full, then its last token again (for its logits)
    assert one.work.needed_prompt_tokens == wave.work.needed_prompt_tokens == len(tiny.encode(prompt)) + 1


# ---- key/value bytes and the memory roof --------------------------------------------------------
def test_kv_read_bytes_of_decoding_by_hand() -> None:
    shape = _shape()
    per_token = 2 * 2 * 1 * 5 * 2  # K and V x layers x kv_heads x head_dim x bytes
    assert shape.kv_token_bytes == per_token
    work = Work(shape)
    work.prompt([1, 2, 3, 4, 5])  # prefill: compute-bound, no bytes counted
    assert work.kv_read_bytes == 0
    work.generated([1, 2, 3, 4, 5], [6, 7, 8, 9], 4)  # tokens fed back at positions 5, 6, 7
    assert work.kv_read_bytes == per_token * (6 + 7 + 8)
    work.generated([1, 2], [3], 1)  # the only token came from the prompt's last position: no read
    assert work.kv_read_bytes == per_token * (6 + 7 + 8)
    tree = Work(shape)
    tree.options([0] * 7, [0, 0, 1])  # nodes at positions 7, 7, 8
    assert tree.kv_read_bytes == per_token * (8 + 8 + 9)
    assert merged([work, tree]).kv_read_bytes == per_token * (6 + 7 + 8 + 8 + 8 + 9)
    assert work.as_dict()["kv_read_gb"] == pytest.approx(per_token * 21 / 1e9)


def test_model_shape_reads_grouped_query_heads_and_the_dtype() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    shape = model_shape(LlamaForCausalLM(config).to(torch.bfloat16))
    assert (shape.heads, shape.kv_heads, shape.head_dim, shape.dtype_bytes) == (4, 2, 8, 2)
    assert shape.kv_token_bytes == 2 * 3 * 2 * 8 * 2


def test_the_roofline_bound_is_the_larger_roof() -> None:
    work = Work(_shape())
    work.prompt(list(range(10)))
    work.generated(list(range(10)), [1, 2, 3], 3)
    plain = bounded(work, 1.0, 2.0)
    assert "memory_bound_s" not in plain and "roofline_bound_s" not in plain  # no bandwidth: the FLOP roof only
    assert plain["kv_read_gb"] == pytest.approx(work.kv_read_bytes / 1e9)
    fast = bounded(work, 1.0, 2.0, bandwidth_gb_s=1e3)  # memory roof far below the FLOP roof
    assert fast["memory_bound_s"] == pytest.approx(work.kv_read_bytes / 1e12)
    assert fast["roofline_bound_s"] == fast["bound_s"] == plain["bound_s"] and fast["efficiency"] == plain["efficiency"]
    slow = bounded(work, 1.0, 2.0, bandwidth_gb_s=1e-9)  # one byte per second: memory-bound
    assert slow["memory_bound_s"] == pytest.approx(work.kv_read_bytes) and slow["memory_bound_s"] > slow["bound_s"]
    assert slow["roofline_bound_s"] == slow["memory_bound_s"]
    assert slow["roofline_efficiency"] == pytest.approx(slow["memory_bound_s"] / 2.0)
    assert bounded(work, 1.0, 0.0, 1.0)["roofline_efficiency"] is None


def test_bandwidth_is_positive_finite_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "BANDWIDTH_BYTES", 4 * 2**20)
    monkeypatch.setattr(peak, "BANDWIDTH_BUDGET_S", 0.05)
    bw = measure_bandwidth("cpu", threads=1)
    assert 0 < bw["gb_s"] < float("inf") and bw["bytes"] == 4 * 2**20
    assert bw["device"] == "cpu" and bw["threads"] == 1 and 0 < bw["seconds"] < 1
    assert bw["gb_s"] == pytest.approx(bw["bytes"] / bw["seconds"] / 1e9)
    assert measure_bandwidth("cpu", threads=1) is bw  # cached


def test_the_peak_names_are_re_exported_from_the_roofline() -> None:
    for name in ("peak_shapes", "measure_peak", "model_peak", "measure_bandwidth", "model_bandwidth"):
        assert getattr(roofline, name) is getattr(peak, name), name


# ---- the peak ----------------------------------------------------------------------------------
def test_peak_is_the_best_of_positive_per_shape_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "SHAPE_BUDGET_S", 0.02)
    best = measure_peak(torch.float32, "cpu", [(32, 32, 32), (64, 48, 96)], threads=1)
    assert [(r["m"], r["k"], r["n"]) for r in best["shapes"]] == [(32, 32, 32), (64, 48, 96)]
    assert all(r["gflops"] > 0 and r["seconds"] > 0 for r in best["shapes"])
    assert best["gflops"] == max(r["gflops"] for r in best["shapes"])
    assert best["dtype"] == "float32" and best["threads"] == 1 and best["measure_s"] < 5
    assert measure_peak(torch.float32, "cpu", [(32, 32, 32), (64, 48, 96)], threads=1) is best  # cached
    monkeypatch.setattr(peak, "SKIP_OVER_S", 1e-12)  # anything after the first shape: too slow
    skipped = measure_peak(torch.float32, "cpu", [(16, 16, 16), (2048, 2048, 2048)], threads=1)
    assert skipped["shapes"][1]["gflops"] is None and skipped["gflops"] == skipped["shapes"][0]["gflops"]


def test_peak_shapes_include_the_models_mlp(small_peak: None) -> None:
    assert roofline.peak_shapes(_shape()) == [(64, 8, 16), (128, 128, 128)]


# ---- a society step ----------------------------------------------------------------------------
def test_society_steps_have_a_roofline_on_a_transformers_model(tiny, tiny_model_dir: Path, small_peak: None) -> None:
    settings = SocietyBenchSettings(model=f"hf:{tiny_model_dir}", population=4, steps=1, network="complete",
                                    max_tokens=4, per_party=2)
    report = run_society_bench(settings, llm=tiny)
    roof = report["roofline"]
    assert [s["step"] for s in roof["steps"]] == [0, 1]
    for step, measured in zip(roof["steps"], report["per_step"]):
        assert step["measured_s"] == measured["seconds"]
        assert step["needed_gflop"] > 0 and step["efficiency"] > 0
        assert step["roofline_bound_s"] == max(step["bound_s"], step["memory_bound_s"]) > 0
    total = roof["total"]
    assert total["needed_gflop"] == pytest.approx(sum(s["needed_gflop"] for s in roof["steps"]))
    assert total["generated_tokens"] == report["tokens"]["completion_tokens"]
    assert total["prompt_tokens"] == report["prefix_cache"]["prompt_tokens"]  # the backend saw the same prompts
    assert total["needed_prompt_tokens"] <= total["computed_prompt_tokens"] <= total["prompt_tokens"]
    assert roof["bandwidth"]["gb_s"] > 0 and roof["bandwidth"]["bytes"] == 2**20
    assert total["kv_read_gb"] == pytest.approx(sum(s["kv_read_gb"] for s in roof["steps"])) and total["kv_read_gb"] > 0
    text = format_society_report(report)
    assert "roofline:" in text and "eff." in text and "mem s" in text and "memory roof:" in text
    json.dumps(report)


def test_insert_returns_the_common_prefix_before_adding() -> None:
    seen = PrefixSet()
    for seq in ([1, 2, 3], [1, 2, 4, 5], [1, 2, 4, 5], [7], []):
        expected = seen.common(seq)
        assert seen.insert(seq) == expected
        assert seen.common(seq) == len(seq)  # every prefix of it is held now
    assert len(seen) == 6
