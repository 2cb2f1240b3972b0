"""The vLLM backend (``vllm:``).

The logic runs everywhere: option scores from top-logprob tables (the "10" two-step, renormalising),
stop cutting, engine arguments, the lazy-import and no-CUDA errors, and the whole request flow
(one engine call per wave, LoRA per request) against a fake engine that records its calls. The
tests marked ``gpu`` need vLLM and a CUDA GPU and skip cleanly elsewhere; scripts/gpu_check.sh runs
them on a GPU machine.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Sequence

import pytest
from tiny_model import build_tiny_model

from debatelab.errors import DebatelabError
from debatelab.llm import load_llm
from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.options import BackendOptions
from debatelab.llm.wrappers import Wrapper
from debatelab.llm.vllm_backend import (
    VLLMLLM,
    VLLMEngine,
    VLLMSettings,
    continuation_logprob,
    encode,
    engine_kwargs,
    find_end_of_turn,
    finish,
    lora_rank_slot,
    option_logprobs,
    renormalise,
    second_step_tokens,
)

SCALE = tuple(str(i) for i in range(11))
LOG = math.log


def chat(text: str, prefix: str = "") -> Prompt:
    return Prompt(messages=(Message("system", "You are Alice."), Message("user", text)), assistant_prefix=prefix)


def probs(logprobs: Sequence[float]) -> list[float]:
    return [math.exp(lp) for lp in logprobs]


# ---- option scores from top-logprob tables ------------------------------------------------
# Token ids 0-9 stand for "0".."9"; "10" is split into [1, 0] as in SmolLM2's tokenizer.
SPLIT = [[d] for d in range(10)] + [[1, 0]]


def test_ten_is_two_steps_and_one_means_no_further_digit() -> None:
    first = {1: (LOG(0.3), "1"), 7: (LOG(0.5), "7"), 0: (LOG(0.1), "0"), 99: (LOG(0.1), "x")}
    after = {1: {0: (LOG(0.5), "0"), 5: (LOG(0.1), "5"), 100: (LOG(0.3), "<|im_end|>")}}
    p = probs(option_logprobs(SPLIT, first, after))
    raw = {0: 0.1, 1: 0.3 * (1 - 0.6), 7: 0.5, 10: 0.3 * 0.5}  # "1" loses the mass of "10" and "15"
    total = sum(raw.values())
    assert p == pytest.approx([raw.get(i, 0.0) / total for i in range(11)])
    assert sum(p) == pytest.approx(1.0)


def test_options_outside_top_k_are_minus_inf() -> None:
    scores = option_logprobs(SPLIT, {7: (LOG(0.5), "7")}, {})
    assert scores[7] == 0.0 and all(s == -math.inf for i, s in enumerate(scores) if i != 7)
    assert second_step_tokens(SPLIT, {7: (LOG(0.5), "7")}) == []  # no "1": no second step needed
    assert second_step_tokens(SPLIT, {1: (LOG(0.5), "1")}) == [1]


def test_ten_as_one_token_needs_no_second_step() -> None:
    options = [[d] for d in range(10)] + [[10]]
    first = {1: (LOG(0.2), "1"), 10: (LOG(0.6), "10")}
    assert second_step_tokens(options, first) == []
    p = probs(option_logprobs(options, first, {}))
    assert p[1] == pytest.approx(0.25) and p[10] == pytest.approx(0.75)


def test_all_digit_continuations_leave_one_impossible() -> None:
    first = {1: (LOG(0.5), "1"), 2: (LOG(0.5), "2")}
    after = {1: {0: (0.0, "0")}}  # after "1" the model always writes "0"
    p = probs(option_logprobs(SPLIT, first, after))
    assert p[1] == 0.0 and p[10] == pytest.approx(0.5) and p[2] == pytest.approx(0.5)


def test_renormalise() -> None:
    assert probs(renormalise([LOG(0.2), -math.inf, LOG(0.6)])) == pytest.approx([0.25, 0.0, 0.75])
    assert renormalise([-math.inf, -math.inf]) == (-math.inf, -math.inf)
    assert renormalise([]) == ()


def test_continuation_logprob_sums_from_start() -> None:
    table = [None, {5: -1.0}, {6: -2.0, 9: -0.1}, {7: -0.5}]
    assert continuation_logprob(table, [4, 5, 6, 7], 2) == pytest.approx(-2.5)
    assert continuation_logprob(table, [4, 5, 8, 7], 2) == -math.inf  # a token vLLM gave no value


# ---- stop strings, finish reasons ---------------------------------------------------------
def test_finish_cuts_stop_strings_and_counts_tokens_before_end() -> None:
    assert finish("Alice: hi\nBob:", [1, 2, 3], "length", ["\nBob:"], {0}) == ("Alice: hi", 3, "stop")
    assert finish("hello", [1, 2, 0], "stop", [], {0}) == ("hello", 2, "stop")  # eos is not counted
    assert finish("hello there", [1, 2, 3], "length", ["Bob"], {0}) == ("hello there", 3, "length")
    assert finish("hi", [1], "stop", [""], {0}) == ("hi", 1, "stop")  # vLLM cut at a stop string


# ---- engine arguments, loading errors -----------------------------------------------------
def test_engine_kwargs_are_safe_by_default() -> None:
    kw = engine_kwargs("org/model", BackendOptions(), VLLMSettings(), lora_rank=0)
    assert kw["load_format"] == "safetensors" and kw["trust_remote_code"] is False
    assert kw["enable_prefix_caching"] is True and kw["dtype"] == "bfloat16"
    assert "enable_lora" not in kw and kw["max_logprobs"] >= 20
    opted = engine_kwargs("m", BackendOptions(allow_pickle=True, trust_remote_code=True, dtype="float16",
                                              revision="abc", adapter="/a"),
                          VLLMSettings(adapters=("/b", "/c"), max_loras=2, top_logprobs=50), lora_rank=16)
    assert opted["load_format"] == "auto" and opted["trust_remote_code"] is True and opted["dtype"] == "float16"
    assert opted["revision"] == opted["tokenizer_revision"] == "abc" and opted["max_logprobs"] == 50
    assert opted["enable_lora"] is True and opted["max_lora_rank"] == 16 and opted["max_loras"] == 3


def test_lora_rank_slots() -> None:
    assert [lora_rank_slot(r) for r in (1, 8, 9, 64, 200)] == [8, 8, 16, 64, 256]
    with pytest.raises(DebatelabError, match="rank 600"):
        lora_rank_slot(600)


def test_importing_the_module_needs_no_vllm() -> None:
    code = ("import sys; sys.modules['vllm'] = None; import debatelab.llm.vllm_backend; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_vllm_is_one_line_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(DebatelabError) as err:
        load_llm("vllm:org/model")
    assert "pip install 'debatelab[vllm]'" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_no_cuda_is_one_line(fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DebatelabError, match="CUDA") as err:
        load_llm("vllm:org/model")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    (BackendOptions(device="cpu"), "CUDA only"),
    (BackendOptions(quantization="4bit"), "pre-quantized"),
])
def test_unsupported_options_are_refused(fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                                         options: BackendOptions, message: str) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(DebatelabError, match=message):
        load_llm("vllm:org/model", options)


def test_name_and_paths_are_checked(fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(DebatelabError, match="needs a hub id"):
        load_llm("vllm:")
    with pytest.raises(DebatelabError, match="no such directory"):
        load_llm(f"vllm:{tmp_path}/missing")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(DebatelabError, match="only pickled weights"):
        load_llm(f"vllm:{tmp_path}")


# ---- the request flow against a fake engine ------------------------------------------------
def fake_logprobs(context: Sequence[int], vocab: int) -> list[float]:
    """A deterministic next-token distribution that depends on the last token only."""
    last = context[-1] if context else 0
    logits = [((last * 7919 + t * 104729) % 1009) / 60.0 for t in range(vocab)]
    top = max(logits)
    norm = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - norm for x in logits]


class FakeParams:
    """Stands in for vllm.SamplingParams: keeps what it was given."""

    def __init__(self, **kwargs: Any):
        self.seed = self.stop = self.logprobs = self.prompt_logprobs = None
        self.max_tokens, self.stop_token_ids = 16, []
        self.__dict__.update(kwargs)


class FakeLLM:
    """Stands in for vllm.LLM: records every generate call; canned replies, fake log-probabilities."""

    def __init__(self, tokenizer: Any, max_len: int = 512):
        self.tokenizer = tokenizer
        self.calls: list[tuple[list[list[int]], list[FakeParams], Any]] = []
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=max_len))

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[dict], params: list[FakeParams], *, use_tqdm: bool, lora_request: Any) -> list:
        assert use_tqdm is False and isinstance(params, list) and len(params) == len(prompts)
        ids = [p["prompt_token_ids"] for p in prompts]
        self.calls.append((ids, params, lora_request))
        return [self._one(i, p) for i, p in zip(ids, params)]

    def _one(self, ids: list[int], sp: FakeParams) -> types.SimpleNamespace:
        vocab, tok = len(self.tokenizer), self.tokenizer
        reply = tok(f"Reply {sp.seed}. And more.", add_special_tokens=False).input_ids + [tok.eos_token_id]
        out = reply[: sp.max_tokens]
        text, reason = tok.decode(out, skip_special_tokens=True), "stop" if out == reply else "length"
        for stop in sp.stop or []:
            if stop in text:
                text, reason = text[: text.index(stop)], "stop"
        logprobs = None
        if sp.logprobs is not None:
            lps = fake_logprobs(ids, vocab)
            top = sorted(range(vocab), key=lambda t: -lps[t])[: sp.logprobs]
            logprobs = [{t: types.SimpleNamespace(logprob=lps[t], decoded_token=tok.decode([t])) for t in top}]
        prompt_logprobs = None
        if sp.prompt_logprobs is not None:
            prompt_logprobs = [None] + [{ids[i]: types.SimpleNamespace(logprob=fake_logprobs(ids[:i], vocab)[ids[i]])}
                                        for i in range(1, len(ids))]
        completion = types.SimpleNamespace(text=text, token_ids=out, finish_reason=reason, logprobs=logprobs)
        return types.SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=prompt_logprobs, outputs=[completion],
                                     num_cached_tokens=3)


def fake_lora(name: str, lora_id: int, path: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(lora_name=name, lora_int_id=lora_id, lora_path=path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def fake_backend(tokenizer: Any, *, max_len: int = 512, top_logprobs: int | None = None,
                 max_lora_rank: int = 16) -> VLLMLLM:
    engine = VLLMEngine(FakeLLM(tokenizer, max_len), {"backend": "vllm", "model": "fake"},
                        sampling_params=FakeParams, lora_request=fake_lora, max_lora_rank=max_lora_rank,
                        top_logprobs=top_logprobs or len(tokenizer))
    return VLLMLLM(engine)


def test_prompts_are_encoded_exactly_as_hf_does(tokenizer: Any, model_dir: Path) -> None:
    hf = load_llm(f"hf:{model_dir}", BackendOptions(device="cpu", threads=1))
    for prompt in (chat("debate climate", "Alice:"), chat("hi"), Prompt(text="Q: 1+1?", assistant_prefix="A:")):
        assert encode(tokenizer, prompt) == hf.encode(prompt)
    assert find_end_of_turn(tokenizer) == hf.end_of_turn == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_generate_is_one_engine_call_per_wave(tokenizer: Any) -> None:
    llm = fake_backend(tokenizer)
    reqs = [GenerateRequest(chat(f"topic {i}", "Alice:"), seed=i, temperature=0.7, top_p=0.9) for i in range(4)]
    reqs += [GenerateRequest(chat("short"), max_tokens=2), GenerateRequest(chat("cut"), seed=9, stop=(" And",))]
    outs = llm.generate(reqs)
    ((prompts, params, lora),) = llm.engine.llm.calls
    assert prompts == [encode(tokenizer, r.prompt) for r in reqs] and lora is None
    assert [p.seed for p in params] == [0, 1, 2, 3, None, 9]
    assert params[0].temperature == 0.7 and params[0].top_p == 0.9 and params[5].stop == [" And"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in params[0].stop_token_ids
    assert outs[0].text == "Reply 0. And more." and outs[0].finish_reason == "stop"
    assert outs[0].completion_tokens == len(tokenizer("Reply 0. And more.", add_special_tokens=False).input_ids)
    assert outs[4].finish_reason == "length" and outs[4].completion_tokens == 2
    assert outs[5].text == "Reply 9." and outs[5].finish_reason == "stop"
    assert llm.usage.calls == 1 and llm.usage.prompt_tokens == sum(map(len, prompts))
    assert llm.usage.extra["cached_prompt_tokens"] == 3 * len(reqs)


def test_a_prompt_too_long_fails_only_its_request(tokenizer: Any) -> None:
    llm = fake_backend(tokenizer, max_len=40)
    outs = llm.generate([GenerateRequest(chat("hi")), GenerateRequest(chat("debate " * 60)),
                         GenerateRequest(chat("hi"), max_tokens=0)])
    assert outs[0].error is None and outs[0].text
    assert "max_model_len" in (outs[1].error or "") and "max_tokens" in (outs[2].error or "")
    assert len(llm.engine.llm.calls[0][0]) == 1  # vLLM would have failed the whole call


def reference_scale(ctx: list[int], tok: Any) -> list[float]:
    """The first-token definition computed directly from the fake distribution."""
    vocab = len(tok)
    digit = {d: tok(str(d), add_special_tokens=False).input_ids[0] for d in range(10)}
    first, after_one = fake_logprobs(ctx, vocab), fake_logprobs(ctx + [digit[1]], vocab)
    more = sum(math.exp(after_one[t]) for t in range(vocab) if tok.decode([t])[:1].isdigit())
    p = [math.exp(first[digit[d]]) for d in range(10)] + [math.exp(first[digit[1]] + after_one[digit[0]])]
    p[1] *= 1 - more
    return [x / sum(p) for x in p]


def test_scale_scores_take_two_engine_calls(tokenizer: Any) -> None:
    assert len(tokenizer("10", add_special_tokens=False).input_ids) == 2  # the split case
    llm = fake_backend(tokenizer)  # k = the whole vocabulary: the reference needs no top-k cut
    reqs = [ScoreRequest(chat(f"agree? {i}", "Answer:"), SCALE) for i in range(3)]
    scores = llm.score_options(reqs)
    calls = llm.engine.llm.calls
    assert len(calls) == 2
    one = tokenizer("1", add_special_tokens=False).input_ids
    ctx = [encode(tokenizer, r.prompt) for r in reqs]
    assert calls[0][0] == ctx and calls[1][0] == [c + one for c in ctx]
    assert all(p.logprobs == len(tokenizer) and p.max_tokens == 1 for p in calls[0][1] + calls[1][1])
    for c, s in zip(ctx, scores):
        assert s.source == "logprobs" and probs(s.logprobs) == pytest.approx(reference_scale(c, tokenizer))


def test_small_k_gives_minus_inf_and_still_renormalises(tokenizer: Any) -> None:
    llm = fake_backend(tokenizer, top_logprobs=50)
    for s in llm.score_options([ScoreRequest(chat(f"q{i}", "Answer:"), SCALE) for i in range(8)]):
        finite = [p for p in probs(s.logprobs) if p > 0]
        assert not finite or sum(finite) == pytest.approx(1.0)
        assert len(finite) < 11  # 50 of ~1000 tokens cannot hold all eleven answers


def test_long_options_fall_back_to_prompt_logprobs(tokenizer: Any) -> None:
    llm = fake_backend(tokenizer)
    options = ("I would answer 3", "Maybe 4 after this debate", "no")
    fast_req, slow_req = ScoreRequest(chat("a", "Answer:"), SCALE), ScoreRequest(chat("b", "Answer:"), options)
    scores = llm.score_options([fast_req, slow_req])
    calls = llm.engine.llm.calls
    assert len(calls) == 2 and len(calls[0][0]) == 1 + len(options)  # fallback prompts ride the first call
    ctx = encode(tokenizer, slow_req.prompt)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    raw = []
    for option in options:
        full = ctx + tokenizer(option, add_special_tokens=False).input_ids + [end]
        raw.append(sum(fake_logprobs(full[:i], len(tokenizer))[full[i]] for i in range(len(ctx), len(full))))
    assert scores[1].logprobs == pytest.approx(renormalise(raw))
    assert all(p.prompt_logprobs == 0 for p in calls[0][1][1:])


def make_adapter(folder: Path, rank: int = 8, pickled: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(f'{{"peft_type": "LORA", "r": {rank}, "target_modules": ["q_proj"]}}')
    (folder / ("adapter_model.bin" if pickled else "adapter_model.safetensors")).write_bytes(bytes([rank]) * 64)
    return folder


def test_views_share_the_engine_and_send_their_adapter(tokenizer: Any, tmp_path: Path) -> None:
    base = fake_backend(tokenizer)
    a_dir, b_dir = make_adapter(tmp_path / "a"), make_adapter(tmp_path / "b", rank=16)
    a, b = base.with_adapter(a_dir), base.with_adapter(str(b_dir))
    assert a.engine is b.engine is base.engine and a.with_adapter(None).identity() == base.identity()
    assert "adapter" not in base.identity() and a.identity()["adapter"]["path"] == str(a_dir.resolve())
    assert a.identity()["adapter"]["weights"] != b.identity()["adapter"]["weights"]
    assert a.shares_engine(b) and base.shares_engine(a) and not a.shares_engine(fake_backend(tokenizer))
    req = GenerateRequest(chat("hi"), seed=1)
    a.generate([req, req])
    outs = base.generate_mixed([(a, [req]), (b, [req]), (base, [req])])
    (_, _, lora_a), (_, _, mixed) = base.engine.llm.calls
    assert [x.lora_int_id for x in lora_a] == [1, 1] and lora_a[0].lora_path == str(a_dir.resolve())
    assert [x.lora_int_id if x else None for x in mixed] == [1, 2, None] and [len(o) for o in outs] == [1, 1, 1]
    base.score_options_mixed([(b, [ScoreRequest(chat("q"), SCALE)]), (base, [ScoreRequest(chat("q"), SCALE)])])
    assert [x.lora_int_id if x else None for x in base.engine.llm.calls[2][2]] == [2, None]
    with pytest.raises(ValueError, match="views of this engine"):
        base.generate_mixed([(fake_backend(tokenizer), [req])])


def test_a_mixed_call_of_two_views_is_one_engine_call_split_in_order(tokenizer: Any, tmp_path: Path) -> None:
    base = fake_backend(tokenizer)
    a = base.with_adapter(make_adapter(tmp_path / "a"))
    reqs_a = [GenerateRequest(chat(f"a{i}"), seed=i, max_tokens=3 + i) for i in range(2)]
    reqs_b = [GenerateRequest(chat(f"b{i}"), seed=10 + i) for i in range(3)]
    alone = [a.generate(reqs_a), base.generate(reqs_b)]
    calls = len(base.engine.llm.calls)
    wrapped = Wrapper(base)  # a wrapper's views still reach the engine together
    mixed = wrapped.generate_mixed([(wrapped.with_adapter(tmp_path / "a"), reqs_a), (wrapped, reqs_b)])
    assert len(base.engine.llm.calls) == calls + 1
    (prompts, _, loras) = base.engine.llm.calls[-1]
    assert prompts == [encode(tokenizer, r.prompt) for r in reqs_a + reqs_b]
    assert [x.lora_int_id if x else None for x in loras] == [1, 1, None, None, None]
    assert mixed == alone
    scores = [ScoreRequest(chat(f"q{i}"), SCALE) for i in range(3)]
    got = base.score_options_mixed([(base, scores[:1]), (a, scores[1:])])
    assert got == [base.score_options(scores[:1]), a.score_options(scores[1:])]


def test_adapters_are_checked(tokenizer: Any, tmp_path: Path) -> None:
    base = fake_backend(tokenizer)
    with pytest.raises(DebatelabError, match="adapter_model.safetensors"):
        base.with_adapter(make_adapter(tmp_path / "pickled", pickled=True))
    with pytest.raises(DebatelabError, match="max_lora_rank"):
        base.with_adapter(make_adapter(tmp_path / "big", rank=64))
    with pytest.raises(DebatelabError, match="not a PEFT adapter"):
        base.with_adapter(tmp_path)
    listed = make_adapter(tmp_path / "list")
    (listed / "adapter_config.json").write_text("[8]")  # was a TypeError traceback
    with pytest.raises(DebatelabError, match="must be a JSON object"):
        base.with_adapter(listed)
    with pytest.raises(DebatelabError, match="without LoRA"):
        fake_backend(tokenizer, max_lora_rank=0).with_adapter(make_adapter(tmp_path / "ok"))


# ---- on a GPU with vLLM (skipped elsewhere) ------------------------------------------------
def build_vllm_tiny_model(path: Path) -> Path:
    """tiny_model's tokenizer with a Llama whose head size (64) every vLLM attention backend takes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_model(path)
    base = LlamaConfig.from_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=base.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.1, tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def train_free_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A random (non-zero) LoRA: enough to make outputs differ from the base and each other."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> tuple[VLLMLLM, Path, list[Path]]:
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("peft")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: simpler teardown
    from debatelab.llm.vllm_backend import load_vllm

    root = tmp_path_factory.mktemp("vllm")
    model = build_vllm_tiny_model(root / "model")
    adapters = [train_free_adapter(model, root / f"adapter{i}", seed=i) for i in (1, 2)]
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(model))
    settings = VLLMSettings(adapters=tuple(map(str, adapters)), gpu_memory_utilization=0.3, max_model_len=512,
                            top_logprobs=vocab, enforce_eager=True)
    return load_vllm(str(model), BackendOptions(), settings), model, adapters


def _prompts(n: int = 6) -> list[Prompt]:
    return [chat("debate climate " * (i + 1), "Alice:") for i in range(n)]


def test_gpu_batched_generate_equals_one_at_a_time(gpu: tuple[VLLMLLM, Path, list[Path]]) -> None:
    llm = gpu[0]
    reqs = [GenerateRequest(p, temperature=1.0, max_tokens=16, seed=i) for i, p in enumerate(_prompts())]
    calls = llm.engine.calls
    batched = llm.generate(reqs)
    assert llm.engine.calls == calls + 1
    assert [o.text for o in batched] == [llm.generate([r])[0].text for r in reqs]
    again = llm.generate([GenerateRequest(reqs[0].prompt, max_tokens=16, seed=s) for s in (0, 0, 1, 2, 3)])
    assert again[0].text == again[1].text == batched[0].text and len({o.text for o in again}) > 1
    cut = llm.generate([GenerateRequest(reqs[0].prompt, max_tokens=3, seed=0, stop=(batched[0].text[3:6] or "x",))])
    assert cut[0].completion_tokens <= 3 and cut[0].finish_reason in ("stop", "length")


def test_gpu_scale_scores_match_transformers(gpu: tuple[VLLMLLM, Path, list[Path]]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm, model_dir, _ = gpu
    tok = AutoTokenizer.from_pretrained(model_dir)
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()

    def next_logprobs(ids: list[int]) -> list[float]:
        with torch.no_grad():
            logits = ref_model(torch.tensor([ids], device="cuda")).logits[0, -1]
        return torch.log_softmax(logits.float(), -1).tolist()

    prompts = _prompts()
    scores = llm.score_options([ScoreRequest(p, SCALE) for p in prompts])
    digit = {d: tok(str(d), add_special_tokens=False).input_ids[0] for d in range(10)}
    for prompt, got in zip(prompts, scores):
        ctx = encode(tok, prompt)
        first, after = next_logprobs(ctx), next_logprobs(ctx + [digit[1]])
        more = sum(math.exp(after[t]) for t in range(len(after)) if tok.decode([t])[:1].isdigit())
        p = [math.exp(first[digit[d]]) for d in range(10)] + [math.exp(first[digit[1]] + after[digit[0]])]
        p[1] *= 1 - more
        assert sum(probs(got.logprobs)) == pytest.approx(1.0)
        assert max(abs(a - b / sum(p)) for a, b in zip(probs(got.logprobs), p)) < 0.05  # bf16 vs float32


def test_gpu_fallback_scores_agree_with_hf_backend(gpu: tuple[VLLMLLM, Path, list[Path]]) -> None:
    from debatelab.survey import normalise

    llm, model_dir, _ = gpu
    hf = load_llm(f"hf:{model_dir}", BackendOptions(device="cuda", dtype="float32"))
    options = ("I would answer 3", "Maybe 4 after this debate", "no", "yes")
    reqs = [ScoreRequest(p, options) for p in _prompts(4)]
    for ours, theirs in zip(llm.score_options(reqs), hf.score_options(reqs)):
        expected = normalise(theirs.logprobs) or []
        assert max(abs(a - b) for a, b in zip(probs(ours.logprobs), expected)) < 0.05


def test_gpu_two_adapters_in_one_call(gpu: tuple[VLLMLLM, Path, list[Path]]) -> None:
    llm, _, (a_dir, b_dir) = gpu
    req = GenerateRequest(_prompts(1)[0], temperature=0.0, max_tokens=24)
    calls = llm.engine.calls
    a, b = llm.with_adapter(a_dir), llm.with_adapter(b_dir)
    outs = [o for part in llm.generate_mixed([(a, [req]), (b, [req]), (llm, [req])]) for o in part]
    assert llm.engine.calls == calls + 1
    assert outs[0].text != outs[1].text
    assert a.generate([req])[0].text == outs[0].text
    score = ScoreRequest(_prompts(1)[0], SCALE)
    [sa], [sb] = llm.score_options_mixed([(a, [score]), (b, [score])])
    assert max(abs(x - y) for x, y in zip(probs(sa.logprobs), probs(sb.logprobs))) > 1e-3
    assert llm.with_adapter(a_dir).identity() != llm.with_adapter(b_dir).identity() != llm.identity()
