"""The transformers backend (``hf:``) against a tiny random Llama built locally (no downloads)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from tiny_model import same_weights

from debatelab.errors import DebatelabError
from debatelab.llm import load_llm
from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.hf import HFLLM
from debatelab.llm.hf_kv import Row
from debatelab.llm.weights import dir_fingerprint
from debatelab.llm.options import BackendOptions

SCALE = tuple(str(i) for i in range(11))


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> Iterator[HFLLM]:
    # One intra-op thread: for a model this small, torch's thread pool only adds contention
    # (seconds per call instead of milliseconds on a busy 2-core machine). Restored afterwards.
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        loaded = load_llm(f"hf:{model_dir}", BackendOptions(device="cpu", dtype="float32", batch_size=64, threads=1))
    assert isinstance(loaded, HFLLM)
    assert torch.get_num_threads() == 1
    yield loaded
    torch.set_num_threads(threads)


def with_batch_size(llm: HFLLM, size: int) -> HFLLM:
    return same_weights(llm, batch_size=size)


def chat(*turns: str, prefix: str = "") -> Prompt:
    roles = ["system", "user"] if len(turns) > 1 else ["user"]
    return Prompt(messages=tuple(Message(r, t) for r, t in zip(roles, turns)), assistant_prefix=prefix)


def raw(text: str, prefix: str = "") -> Prompt:
    return Prompt(text=text, assistant_prefix=prefix)


# ---- loading, identity ------------------------------------------------------------------
def test_load_identity_and_fingerprint(llm: HFLLM, model_dir: Path, tmp_path: Path) -> None:
    ident = llm.identity()
    assert ident["backend"] == "hf"
    assert ident["model"] == str(model_dir.resolve())
    assert ident["dtype"] == "float32" and ident["quantization"] == "none"
    assert isinstance(ident["weights"], str) and len(ident["weights"]) == 16
    assert ident["weights"] == dir_fingerprint(model_dir)
    # an unresolved spelling of the same dir gives the same identity
    again = load_llm(f"hf:{model_dir}/../{model_dir.name}", BackendOptions(device="cpu"))
    assert again.identity() == ident
    # a byte-identical copy shares the fingerprint; changed weights do not
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    assert dir_fingerprint(copy) == ident["weights"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert dir_fingerprint(copy) != ident["weights"]


def test_import_debatelab_does_not_import_torch() -> None:
    code = "import debatelab, sys; assert 'torch' not in sys.modules; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tokenizer_splits_digits(llm: HFLLM) -> None:
    tok = llm.tokenizer
    assert len(tok("10", add_special_tokens=False).input_ids) == 2
    assert all(len(tok(d, add_special_tokens=False).input_ids) == 1 for d in SCALE[:10])


def test_quantization_on_cpu_is_refused(model_dir: Path) -> None:
    with pytest.raises(DebatelabError, match="CUDA"):
        load_llm(f"hf:{model_dir}", BackendOptions(device="cpu", quantization="8bit"))


@pytest.mark.parametrize("name", ["/nonexistent/dir", "nonexistent-org/nonexistent-model"])
def test_missing_model_is_one_line_error(name: str) -> None:
    with pytest.raises(DebatelabError) as info:
        load_llm(f"hf:{name}", BackendOptions(device="cpu"))
    message = str(info.value)
    assert "\n" not in message and name in message


def test_missing_local_dir_says_so() -> None:
    with pytest.raises(DebatelabError, match="no such directory"):
        load_llm("hf:/nonexistent/dir", BackendOptions(device="cpu"))


# ---- rendering ----------------------------------------------------------------------------
def test_assistant_prefix_follows_generation_prompt(llm: HFLLM) -> None:
    prompt = chat("You are Alice.", "Rate it from 0 to 10.", prefix="My answer:")
    base = llm.tokenizer.apply_chat_template(
        [m.as_dict() for m in prompt.messages], tokenize=False, add_generation_prompt=True
    )
    assert base.endswith("<|im_start|>assistant\n")
    assert llm.render(prompt) == base + "My answer:"
    assert llm.render(raw("Alice: hi", prefix=" Bob:")) == "Alice: hi Bob:"
    # a chat prompt is encoded without extra special tokens: exactly the rendered text's tokens
    assert llm.encode(prompt) == llm.tokenizer(base + "My answer:", add_special_tokens=False).input_ids


# ---- generation -----------------------------------------------------------------------------
GEN_REQUESTS = [
    GenerateRequest(chat("Hello"), temperature=0.0, max_tokens=12),
    GenerateRequest(
        chat("You are Bob, a debate agent.", "What is your opinion on climate policy? Explain in two sentences."),
        temperature=1.0, max_tokens=16, seed=1,
    ),
    GenerateRequest(raw("Bob:"), temperature=1.0, max_tokens=10, seed=2),
    GenerateRequest(raw("Alice: I think we should act on climate change now. Bob:"), temperature=0.0, max_tokens=16),
    GenerateRequest(chat("Rate from 0 to 10.", prefix="I would say"), temperature=1.0, top_p=0.9, max_tokens=8, seed=3),
    GenerateRequest(raw("The debate"), temperature=1.0, max_tokens=3, seed=4),
    GenerateRequest(chat("Answer with a single number between 0 and 10."), temperature=0.7, max_tokens=20, seed=5),
]


def test_micro_batches_keep_token_budgets_apart(llm: HFLLM) -> None:
    rows = [Row(list(range(n))) for n in (5, 40, 9, 30, 7, 12)]
    budgets = [8, 96, 8, 96, 8, 8]
    batches = with_batch_size(llm, 2)._batches(rows, budgets)
    assert batches == [[1, 3], [5, 2], [4, 0]]  # each budget's rows, longest to compute first
    assert sorted(i for b in batches for i in b) == list(range(6))


@pytest.mark.parametrize("batch_size", [64, 2])
def test_batched_generation_equals_one_at_a_time(llm: HFLLM, batch_size: int) -> None:
    batched = with_batch_size(llm, batch_size).generate(GEN_REQUESTS)
    single = [llm.generate([req])[0] for req in GEN_REQUESTS]
    assert batched == single
    for req, out in zip(GEN_REQUESTS, batched):
        assert out.prompt_tokens == len(llm.encode(req.prompt))
        assert 0 < out.completion_tokens <= req.max_tokens


def test_same_seed_same_text_different_seed_different_text(llm: HFLLM) -> None:
    def req(seed: int) -> GenerateRequest:
        return GenerateRequest(raw("Alice:"), temperature=1.0, max_tokens=24, seed=seed)

    first = llm.generate([req(7), req(7)])
    assert first[0] == first[1]
    assert llm.generate([req(7)])[0] == first[0]
    texts = [c.text for c in llm.generate([req(s) for s in range(100, 106)])]
    assert len(set(texts)) == len(texts)


def test_max_tokens_gives_length(llm: HFLLM) -> None:
    prompt = raw("Alice: I think")
    long = llm.generate([GenerateRequest(prompt, temperature=0.0, max_tokens=30)])[0]
    assert long.completion_tokens > 7  # precondition: the greedy answer runs past 7 tokens
    short = llm.generate([GenerateRequest(prompt, temperature=0.0, max_tokens=7)])[0]
    assert short.completion_tokens == 7 and short.finish_reason == "length"
    assert long.text.startswith(short.text)
    sampled = llm.generate([GenerateRequest(prompt, temperature=1.0, max_tokens=5, seed=s) for s in range(4)])
    for out in sampled:
        assert out.completion_tokens <= 5
        assert out.finish_reason == ("length" if out.completion_tokens == 5 else "stop")


def test_stop_string_cuts_text(llm: HFLLM) -> None:
    prompt = raw("Bob: I disagree.")
    full = llm.generate([GenerateRequest(prompt, temperature=0.0, max_tokens=30)])[0]
    text = full.text
    # a 3-character ASCII piece from the middle of the greedy answer
    start = next(
        k for k in range(len(text) // 3, len(text) - 3)
        if text[k : k + 3].isascii() and text[k : k + 3].isprintable() and text[k : k + 3].strip()
    )
    stop = text[start : start + 3]
    cut = llm.generate([GenerateRequest(prompt, temperature=0.0, max_tokens=30, stop=(stop, "never-there"))])[0]
    assert cut.text == text[: text.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens or full.finish_reason == "stop"
    # in a batch, the stop applies to its own row only
    other = GenerateRequest(raw("Bob: I disagree."), temperature=0.0, max_tokens=30)
    both = llm.generate([GenerateRequest(prompt, temperature=0.0, max_tokens=30, stop=(stop,)), other])
    assert both[0].text == cut.text and both[1] == full


# ---- option scoring ---------------------------------------------------------------------------
def reference_scores(llm: HFLLM, req: ScoreRequest) -> list[float]:
    """Naive: one unbatched forward per option over context + option + terminator."""
    tok, model = llm.tokenizer, llm.model
    if req.prompt.messages:
        text = tok.apply_chat_template(
            [m.as_dict() for m in req.prompt.messages], tokenize=False, add_generation_prompt=True
        ) + req.prompt.assistant_prefix
        context = tok(text, add_special_tokens=False).input_ids
        terminator = [tok.convert_tokens_to_ids("<|im_end|>")]
    else:
        context = tok(req.prompt.text + req.prompt.assistant_prefix).input_ids
        terminator = tok("\n", add_special_tokens=False).input_ids
    scores = []
    for option in req.options:
        suffix = tok(option, add_special_tokens=False).input_ids + terminator
        ids = torch.tensor([context + suffix])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        start = len(context)
        scores.append(sum(float(logprobs[start + j - 1, t]) for j, t in enumerate(suffix)))
    return scores


SCORE_REQUESTS = [
    ScoreRequest(chat("Rate from 0 to 10 how much you agree."), SCALE),
    ScoreRequest(
        chat("You are Alice, a debate agent.", "Should the government tax carbon? Answer with a number 0 to 10."),
        SCALE,
    ),
    ScoreRequest(raw("Answer 0 to 10: "), SCALE),
    ScoreRequest(raw("Alice: On a scale from 0 to 10, how much do you agree? I would say"), SCALE),
    ScoreRequest(chat("Do you agree?", prefix="My answer:"), (" yes", " no", " maybe so")),
    ScoreRequest(raw("Bob:"), ("10", "1", "0")),
]


def test_score_options_match_naive_reference(llm: HFLLM) -> None:
    got = llm.score_options(SCORE_REQUESTS)
    assert len(got) == len(SCORE_REQUESTS)
    for req, scores in zip(SCORE_REQUESTS, got):
        assert scores.source == "logprobs"
        assert len(scores.logprobs) == len(req.options)
        assert list(scores.logprobs) == pytest.approx(reference_scores(llm, req), abs=1e-4)


def test_terminators(llm: HFLLM) -> None:
    assert llm._terminator(chat("hi")) == [llm.tokenizer.eos_token_id]
    assert llm.tokenizer.decode(llm._terminator(raw("hi"))) == "\n"


@pytest.mark.parametrize("batch_size", [2, 1])
def test_score_options_micro_batched_same_and_in_order(llm: HFLLM, batch_size: int) -> None:
    full = llm.score_options(SCORE_REQUESTS)
    small = with_batch_size(llm, batch_size).score_options(SCORE_REQUESTS)
    assert len(small) == len(full)
    for a, b in zip(small, full):
        assert list(a.logprobs) == pytest.approx(list(b.logprobs), abs=1e-4)
    # reversed input gives reversed output
    rev = with_batch_size(llm, batch_size).score_options(SCORE_REQUESTS[::-1])
    for a, b in zip(rev, full[::-1]):
        assert list(a.logprobs) == pytest.approx(list(b.logprobs), abs=1e-4)


# ---- model-shipped defaults and end-of-turn ------------------------------------------------
def test_shipped_generation_config_does_not_change_outputs(llm: HFLLM, model_dir: Path, tmp_path: Path) -> None:
    import json

    copy = tmp_path / "penalised"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "generation_config.json").read_text()) if (copy / "generation_config.json").exists() else {}
    config.update({"repetition_penalty": 10.0, "no_repeat_ngram_size": 1, "top_k": 1})
    (copy / "generation_config.json").write_text(json.dumps(config))
    other = load_llm(f"hf:{copy}", BackendOptions(device="cpu", dtype="float32", threads=1))
    reqs = [GenerateRequest(chat("You are Bob.", "debate climate " * 3), temperature=0.0, max_tokens=24),
            GenerateRequest(chat("You are Ann.", "climate"), temperature=1.0, max_tokens=24, seed=5)]
    assert [c.text for c in other.generate(reqs)] == [c.text for c in llm.generate(reqs)]


def test_end_of_turn_comes_from_the_chat_template(llm: HFLLM) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm.tokenizer.name_or_path)
    tokenizer.eos_token = "<|im_start|>"  # a model whose eos differs from its end-of-turn token
    odd = HFLLM(llm.model, tokenizer, llm.identity(), BackendOptions(device="cpu"))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert odd.end_of_turn == im_end and tokenizer.eos_token_id != im_end
    assert {im_end, tokenizer.eos_token_id} <= odd.stop_ids
    assert odd._terminator(chat("a", "b")) == [im_end]
    HFLLM(llm.model, llm.tokenizer, llm.identity(), llm.options)  # restore the shared model's stop ids


# ---- CPU defaults (chosen with `debatelab bench`; see resolve_device_dtype) ---------------------
def test_cpu_defaults_keep_float32_and_torch_threads() -> None:
    from debatelab.llm.hf_load import resolve_device_dtype

    before = torch.get_num_threads()
    assert resolve_device_dtype(BackendOptions(device="cpu")) == ("cpu", torch.float32)
    assert torch.get_num_threads() == before  # threads=None leaves torch's one-per-core default alone
    try:
        assert resolve_device_dtype(BackendOptions(device="cpu", dtype="bfloat16", threads=1)) == ("cpu", torch.bfloat16)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_prompt_beyond_the_context_fails_alone_and_the_rest_of_the_call_runs(llm: HFLLM) -> None:
    limit = llm.model.config.max_position_embeddings
    long = chat("word " * (2 * limit))
    short = chat("hello")
    outs = llm.generate([GenerateRequest(short, max_tokens=4, seed=1), GenerateRequest(long, max_tokens=4, seed=1)])
    assert outs[0].error is None and outs[1].error is not None and outs[1].text == ""
    assert f"exceeds the model's context of {limit} tokens" in outs[1].error
    assert outs[0] == llm.generate([GenerateRequest(short, max_tokens=4, seed=1)])[0]
    scores = llm.score_options([ScoreRequest(long, ("1", "2")), ScoreRequest(short, ("1", "2"))])
    assert scores[0].error is not None and scores[0].logprobs == () and scores[1].error is None


def test_generate_and_score_run_wholly_in_inference_mode(llm: HFLLM, monkeypatch) -> None:
    """Layout and prefix-store updates too, not just the forward: tensors kept across calls must
    all be inference tensors (mixing them with ordinary ones fails later, in another call)."""
    seen = []
    layout = llm._layout
    monkeypatch.setattr(llm, "_layout", lambda rows, extra=0: seen.append(torch.is_inference_mode_enabled()) or layout(rows, extra))
    llm.generate([GenerateRequest(chat("hello"), max_tokens=2, seed=1)])
    llm.score_options([ScoreRequest(chat("hello"), ("1", "2"))])
    assert seen == [True, True]
