"""Pure helpers of the vLLM backend: option-score arithmetic, stop handling, engine arguments,
prompt encoding. No vLLM import here, so all of it is unit-tested on machines without a GPU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DebatelabError
from .base import GenerateRequest, Prompt
from .chat import find_end_of_turn, render, uses_chat_template  # noqa: F401  (find_end_of_turn re-exported)
from .options import BackendOptions

INSTALL_HINT = "pip install 'debatelab[vllm]'"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)  # max_lora_rank values every vLLM >= 0.8 accepts

Adapter = str | Path | None  # an adapter folder, or None for the base model
TopTokens = dict[int, tuple[float, str]]
"""The top-k tokens at one position: token id -> (log-probability, decoded text)."""


@dataclass(frozen=True)
class VLLMSettings:
    """vLLM-only knobs (``BackendOptions`` holds what every backend shares)."""

    adapters: tuple[str, ...] = ()
    """Adapter folders to validate and register at load, so views can use them (LoRA turns on)."""
    max_loras: int = 4
    """Most distinct adapters in one engine step (at least the number of adapters given)."""
    gpu_memory_utilization: float = 0.85
    """Share of GPU memory vLLM reserves for weights and KV cache."""
    max_model_len: int | None = None
    """Context length (None: the model's own)."""
    top_logprobs: int = 20
    """k, the alternatives per position read for option scoring."""
    enforce_eager: bool = False
    """Skip CUDA graph capture: slower decoding, faster start (tests)."""


# ---- pure helpers (unit-tested without vLLM) ----------------------------------------------
def renormalise(logprobs: Sequence[float]) -> tuple[float, ...]:
    """Log-probabilities rescaled to sum to one over the finite entries; -inf stays -inf."""
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    if not finite:
        return tuple(-math.inf for _ in logprobs)
    top = max(finite)
    total = top + math.log(sum(math.exp(lp - top) for lp in finite))
    return tuple(lp - total if math.isfinite(lp) else -math.inf for lp in logprobs)


def fast_path_ok(option_ids: Sequence[Sequence[int]]) -> bool:
    """Whether first-token scoring (plus one second step) covers every option."""
    return all(1 <= len(ids) <= 2 for ids in option_ids)


def second_step_tokens(option_ids: Sequence[Sequence[int]], first: TopTokens) -> list[int]:
    """First tokens of two-token options that the model gave mass (the rest score -inf anyway)."""
    return sorted({ids[0] for ids in option_ids if len(ids) == 2 and ids[0] in first})


def option_logprobs(option_ids: Sequence[Sequence[int]], first: TopTokens,
                    after: Mapping[int, TopTokens]) -> tuple[float, ...]:
    """Renormalised option scores from the first position's top tokens and, for each first token
    in ``after``, the top tokens that follow it (see the module docstring)."""
    scores = []
    for ids in option_ids:
        lp = first.get(ids[0], (-math.inf, ""))[0]
        nxt = after.get(ids[0])
        if len(ids) == 2:
            lp += nxt.get(ids[1], (-math.inf, ""))[0] if nxt is not None else -math.inf
        elif nxt is not None and _is_strict_prefix(ids, option_ids):
            lp += _log_no_more_digits(nxt)
        scores.append(lp)
    return renormalise(scores)


def _is_strict_prefix(ids: Sequence[int], option_ids: Sequence[Sequence[int]]) -> bool:
    return any(len(o) > len(ids) and list(o[: len(ids)]) == list(ids) for o in option_ids)


def _log_no_more_digits(top: TopTokens) -> float:
    digits = sum(math.exp(lp) for lp, text in top.values() if text[:1].isdigit())
    return math.log1p(-digits) if digits < 1 else -math.inf


def continuation_logprob(prompt_logprobs: Sequence[Mapping[int, float] | None], ids: Sequence[int],
                         start: int) -> float:
    """log P(ids[start:] | ids[:start]) from per-position prompt log-probabilities."""
    total = 0.0
    for i in range(start, len(ids)):
        position = prompt_logprobs[i]
        if position is None or ids[i] not in position:
            return -math.inf
        total += position[ids[i]]
    return total


def finish(text: str, token_ids: Sequence[int], reason: str | None, stops: Sequence[str],
           stop_ids: set[int]) -> tuple[str, int, str]:
    """(text cut at its first stop string, tokens before any end token, "stop" or "length").
    vLLM already cuts at stop strings; cutting again costs nothing and keeps ``hf:``'s contract."""
    ends = [k for k, token in enumerate(token_ids) if token in stop_ids]
    cuts = [text.index(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    stopped = reason == "stop" or bool(ends) or bool(cuts)
    return text, ends[0] if ends else len(token_ids), "stop" if stopped else "length"


def sampling_kwargs(req: GenerateRequest, stop_ids: Sequence[int]) -> dict[str, Any]:
    return {"n": 1, "temperature": max(req.temperature, 0.0), "top_p": req.top_p, "seed": req.seed,
            "max_tokens": req.max_tokens, "stop": list(req.stop) or None, "stop_token_ids": list(stop_ids),
            "include_stop_str_in_output": False, "skip_special_tokens": True}


def engine_kwargs(source: str, options: BackendOptions, settings: VLLMSettings, lora_rank: int) -> dict[str, Any]:
    """Arguments for ``vllm.LLM``; ``lora_rank`` 0 leaves LoRA off (it costs speed and memory)."""
    kwargs: dict[str, Any] = {
        "model": source, "revision": options.revision, "tokenizer_revision": options.revision,
        "trust_remote_code": options.trust_remote_code,
        # vLLM's "auto" would turn a float32 checkpoint into float16; match hf:'s bf16 on CUDA
        "dtype": "bfloat16" if options.dtype == "auto" else options.dtype,
        "load_format": "auto" if options.allow_pickle else "safetensors",
        "enable_prefix_caching": True, "seed": 0, "max_logprobs": max(20, settings.top_logprobs),
        "gpu_memory_utilization": settings.gpu_memory_utilization, "max_model_len": settings.max_model_len,
        "enforce_eager": settings.enforce_eager,
    }
    if lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank,
                      max_loras=max(settings.max_loras, len(settings.adapters) + bool(options.adapter)))
    return kwargs


def lora_rank_slot(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that fits ``rank``."""
    for slot in LORA_RANKS:
        if rank <= slot:
            return slot
    raise DebatelabError(f"LoRA rank {rank} is above vLLM's largest supported rank ({LORA_RANKS[-1]})")


def adapter_rank(folder: Path) -> int:
    from .weights import check_adapter_config

    return int(check_adapter_config(folder).get("r") or 8)


def encode(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids exactly as ``hf:`` builds them: chat template plus assistant prefix when there are
    messages and a template (which writes any BOS itself), else the flat text with BOS."""
    if not uses_chat_template(tokenizer, prompt):
        return list(tokenizer(prompt.flat_text(), add_special_tokens=True).input_ids)
    return list(tokenizer(render(tokenizer, prompt), add_special_tokens=False).input_ids)


# ---- the engine and its adapter views -----------------------------------------------------
