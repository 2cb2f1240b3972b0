"""A matmul roofline for the transformers backends: the work a run strictly needed, against the
machine's measured matrix-multiply peak.

**Needed work.** The calls a mode made are replayed, in order, against a *perfect prefix cache*
with unlimited memory that holds every token sequence computed so far: each prompt's ids and,
for a generate request, the prompt followed by its generated tokens (the completion text encoded
again with ``add_special_tokens=False``; re-tokenisation may differ from the sampled ids at the
seam between prompt and reply, or inside the reply, so reuse of earlier replies is approximate).
A prompt needs only the tokens after its longest common prefix with ANY earlier sequence (of an
earlier call, or earlier in the same call). A prompt seen in full before still computes its last
token: a key/value cache holds no hidden state to read logits from (vLLM recomputes it too).

Per token at position ``p`` (0-based, so it attends to ``p + 1`` keys):

- linear: ``2 x`` the weights of every ``nn.Linear`` of the model but the lm_head (counted from
  the modules themselves, so grouped-query K/V projections and MLP shapes are exact);
- attention: ``4 x layers x heads x head_dim x (p + 1)`` (QK^T and AV);
- lm_head: ``2 x`` its weights, only where logits are read: once per generated token (the first
  from the prompt's last position) and, for option scoring, once at the context's last position
  plus once per option-tree node whose next-token distribution is read.

A generate request with ``n`` tokens feeds ``n - 1`` of them back through the layers (the last
is never needed as input); option-tree nodes go through the layers at context length + depth.
An end-of-turn token that stopped a reply is not counted (``Completion.completion_tokens`` leaves
it out), nor are contrastive prompts: leaving work out keeps the bound a lower bound.

This is a matmul roofline: norms, activations, softmax, rotary embeddings, embedding lookups,
sampling and micro-batch padding are not counted, and the peak is that of ``torch.matmul``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Sequence

from ..llm.base import LLM, Completion, GenerateRequest, ScoreRequest
from ..llm.wrappers import unwrap

SQUARES = (1024, 2048, 4096)
"""Square matmul sizes of the peak measure (plus the model's MLP shape at ``MLP_ROWS`` rows)."""
MLP_ROWS = 2048
SHAPE_BUDGET_S = 1.0
"""Seconds of timed repeats per shape after its warm-up (at least one repeat)."""
MAX_REPEATS = 20
SKIP_OVER_S = 2.5
"""A shape whose one run would take longer than this at the best rate seen so far is skipped
(bf16 on a CPU without bf16 units would spend half a minute on 4096^3)."""
_PEAKS: dict[tuple[Any, ...], dict[str, Any]] = {}


@dataclass(frozen=True)
class ModelShape:
    linear_params: int
    """Weights of every nn.Linear but the lm_head."""
    lm_head_params: int
    layers: int
    heads: int
    head_dim: int
    hidden: int
    intermediate: int

    def layer_flops(self, start: int, end: int) -> tuple[float, float]:
        """(linear, attention) FLOPs of the tokens at positions ``start .. end - 1``."""
        n = max(end - start, 0)
        keys = (end * (end + 1) - start * (start + 1)) // 2 if n else 0  # sum of p + 1 over the span
        return 2.0 * self.linear_params * n, 4.0 * self.layers * self.heads * self.head_dim * keys

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def model_shape(model: Any) -> ModelShape:
    """The shape of a transformers causal LM, its linear weights counted from its modules."""
    from torch import nn

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = model.get_output_embeddings()
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    lm_head = head.in_features * head.out_features if isinstance(head, nn.Linear) else head.weight.numel()
    return ModelShape(linear, lm_head, config.num_hidden_layers, heads, head_dim, config.hidden_size,
                      getattr(config, "intermediate_size", None) or 4 * config.hidden_size)


class PrefixSet:
    """Every prefix of every sequence added, as one chained hash per prefix length: a lookup
    walks the new sequence once and stops at its first unseen prefix."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def common(self, tokens: Sequence[int]) -> int:
        """The longest common prefix of ``tokens`` with any sequence added so far."""
        h, k = 0, 0
        for token in tokens:
            h = hash((h, token))
            if h not in self._seen:
                break
            k += 1
        return k

    def insert(self, tokens: Sequence[int]) -> int:
        """:meth:`common` then :meth:`add`, in one walk."""
        h, common = 0, len(tokens)
        for k, token in enumerate(tokens):
            h = hash((h, token))
            if common == len(tokens) and h not in self._seen:
                common = k
            self._seen.add(h)
        return common

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class Work:
    """FLOPs and token counts of calls, against a perfect prefix cache (shared by forks)."""

    shape: ModelShape
    prefixes: PrefixSet = field(default_factory=PrefixSet)
    linear_flops: float = 0.0
    attention_flops: float = 0.0
    lm_head_flops: float = 0.0
    prompts: int = 0
    prompt_tokens: int = 0
    needed_prompt_tokens: int = 0
    generated_tokens: int = 0
    option_nodes: int = 0

    def fork(self) -> "Work":
        """Zero counters, the same cache: a later part of one run (a society's next step)."""
        return Work(self.shape, self.prefixes)

    @property
    def flops(self) -> float:
        return self.linear_flops + self.attention_flops + self.lm_head_flops

    def _layers(self, start: int, end: int) -> None:
        linear, attention = self.shape.layer_flops(start, end)
        self.linear_flops += linear
        self.attention_flops += attention

    def _logits(self, times: int) -> None:
        self.lm_head_flops += 2.0 * self.shape.lm_head_params * times

    def prompt(self, ids: Sequence[int]) -> None:
        """A prompt through the layers from its first uncached token; then it is cached."""
        start = min(self.prefixes.insert(ids), max(len(ids) - 1, 0))
        self._layers(start, len(ids))
        self.prompts += 1
        self.prompt_tokens += len(ids)
        self.needed_prompt_tokens += len(ids) - start

    def generated(self, ids: Sequence[int], reply: Sequence[int], n: int) -> None:
        """``n`` tokens generated after prompt ``ids`` (already counted); ``reply`` the reply's
        ids as re-encoded, cached after the prompt."""
        self._logits(max(n, 1))  # the first distribution is read even when nothing came of it
        self._layers(len(ids), len(ids) + max(n - 1, 0))
        self.generated_tokens += n
        if reply:
            self.prefixes.insert([*ids, *reply])

    def options(self, ids: Sequence[int], depths: Sequence[int]) -> None:
        """An option tree after context ``ids`` (already counted): logits at the context's last
        token and at every node (``depths``: the nodes whose next-token distribution is read)."""
        self._logits(1 + len(depths))
        self.option_nodes += len(depths)
        for depth in depths:
            self._layers(len(ids) + depth, len(ids) + depth + 1)

    def as_dict(self) -> dict[str, Any]:
        return {"needed_gflop": self.flops / 1e9, "linear_gflop": self.linear_flops / 1e9,
                "attention_gflop": self.attention_flops / 1e9, "lm_head_gflop": self.lm_head_flops / 1e9,
                "prompts": self.prompts, "prompt_tokens": self.prompt_tokens,
                "needed_prompt_tokens": self.needed_prompt_tokens, "generated_tokens": self.generated_tokens,
                "option_nodes": self.option_nodes, "reuse_bound_share": reuse_share(self)}


def reuse_share(work: Work) -> float:
    """The share of prompt tokens a perfect prefix cache would not compute."""
    return 1 - work.needed_prompt_tokens / work.prompt_tokens if work.prompt_tokens else 0.0


class Tracer:
    """Replays the calls a wrapper forwards into :class:`Work` (ids and counts, no tensors).
    ``split`` starts a new tally on the same cache; a mixed call is traced once, by its caller."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.works = [Work(model_shape(backend.model))]
        self.seconds = 0.0
        """Time spent tracing (inside the mode's measured time)."""
        self._mixed = 0

    @property
    def work(self) -> Work:
        return self.works[-1]

    def split(self) -> None:
        self.works.append(self.work.fork())

    @contextmanager
    def mixed(self) -> Iterator[None]:
        """While a mixed call runs, the views' own calls are not traced: the caller traces every
        part once the call returns, whether the call went out whole or view by view."""
        self._mixed += 1
        try:
            yield
        finally:
            self._mixed -= 1

    def _view(self, view: LLM | None) -> Any:
        bare = unwrap(view) if view is not None else self.backend
        return bare if hasattr(bare, "_option_tree") else self.backend

    def generate(self, requests: Sequence[GenerateRequest], outs: Sequence[Completion], view: LLM | None = None) -> None:
        if self._mixed:
            return
        start, llm = time.perf_counter(), self._view(view)
        done = [(llm.encode(r.prompt), out) for r, out in zip(requests, outs) if out.error is None]
        for ids, _ in done:
            self.work.prompt(ids)
        for ids, out in done:  # replies exist only once the call returns: cached after every prompt
            reply = llm.tokenizer(out.text, add_special_tokens=False).input_ids if out.text else []
            self.work.generated(ids, reply, out.completion_tokens)
        self.seconds += time.perf_counter() - start

    def score(self, requests: Sequence[ScoreRequest], outs: Sequence[Any], view: LLM | None = None) -> None:
        if self._mixed:
            return
        start, llm = time.perf_counter(), self._view(view)
        for req, out in zip(requests, outs):
            if out.error is None:
                ids = llm.encode(req.prompt)
                self.work.prompt(ids)
                self.work.options(ids, llm._option_tree(req).depths)
        self.seconds += time.perf_counter() - start


def tracer_for(llm: LLM) -> Tracer | None:
    """A tracer for a transformers backend (a torch model with a config, ``encode``, a tokenizer
    and option trees); None for any other backend (scripted, opinion-sim, openai...)."""
    backend = unwrap(llm)
    model = getattr(backend, "model", None)
    if not (hasattr(model, "config") and hasattr(model, "modules") and hasattr(backend, "encode")
            and hasattr(backend, "tokenizer") and hasattr(backend, "_option_tree")):
        return None
    return Tracer(backend)


# ---- the machine's matmul peak ---------------------------------------------------------------
def peak_shapes(shape: ModelShape | None) -> list[tuple[int, int, int]]:
    """(m, k, n) of the measure: the squares and the model's MLP up-projection, smallest first."""
    shapes = [(s, s, s) for s in SQUARES]
    if shape is not None:
        shapes.append((MLP_ROWS, shape.hidden, shape.intermediate))
    return sorted(dict.fromkeys(shapes), key=lambda s: s[0] * s[1] * s[2])


def measure_peak(dtype: Any, device: Any, shapes: Sequence[tuple[int, int, int]], threads: int | None = None) -> dict[str, Any]:
    """The best ``torch.matmul`` rate (GFLOP/s) over ``shapes`` for this dtype, device and torch
    thread count, each shape warmed up then repeated for about ``SHAPE_BUDGET_S``; cached per
    process."""
    import torch

    threads = threads or torch.get_num_threads()
    key = (str(dtype), str(device), threads, tuple(shapes))
    if key not in _PEAKS:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _PEAKS[key] = _measure(torch, dtype, torch.device(device), shapes, threads)
        finally:
            torch.set_num_threads(previous)
    return _PEAKS[key]


def _measure(torch: Any, dtype: Any, device: Any, shapes: Sequence[tuple[int, int, int]], threads: int) -> dict[str, Any]:
    began, best, rows = time.perf_counter(), 0.0, []
    for m, k, n in shapes:
        flops = 2.0 * m * k * n
        if best and flops / (best * 1e9) > SKIP_OVER_S:
            rows.append({"m": m, "k": k, "n": n, "gflops": None, "skipped": "too slow at the rate seen so far"})
            continue
        seconds = _best_seconds(torch, dtype, device, m, k, n)
        rows.append({"m": m, "k": k, "n": n, "gflops": flops / seconds / 1e9, "seconds": seconds})
        best = max(best, rows[-1]["gflops"])
    return {"gflops": best, "dtype": str(dtype).removeprefix("torch."), "device": str(device), "threads": threads,
            "shapes": rows, "measure_s": time.perf_counter() - began}


def _best_seconds(torch: Any, dtype: Any, device: Any, m: int, k: int, n: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        c = torch.matmul(a, b)  # warm-up: kernel choice and first-touch of the output
        sync()
        best, spent = float("inf"), 0.0
        for _ in range(MAX_REPEATS):
            start = time.perf_counter()
            torch.matmul(a, b, out=c)
            sync()
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
            if spent >= SHAPE_BUDGET_S:
                break
    return max(best, 1e-9)


def model_peak(backend: Any, shapes: Sequence[tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """The peak for the dtype and device the backend's model computes in."""
    model = backend.model
    dtype = getattr(model, "dtype", None) or next(p.dtype for p in model.parameters() if p.is_floating_point())
    return measure_peak(dtype, getattr(backend, "device", "cpu"), shapes or peak_shapes(model_shape(model)))


# ---- the report ------------------------------------------------------------------------------
def bounded(work: Work, peak_gflops: float, measured_s: float) -> dict[str, Any]:
    """Needed work, its time at the peak (the bound), the measured time and bound / measured."""
    bound = work.flops / (peak_gflops * 1e9) if peak_gflops else float("inf")
    return {**work.as_dict(), "bound_s": bound, "measured_s": measured_s,
            "efficiency": bound / measured_s if measured_s > 0 else None}


def computed_tokens(work: Work, cache: dict[str, float] | None) -> int:
    """Prompt tokens the backend computed: those it did not reuse from its prefix cache, or
    every one sent when the cache was off (the transformers backend then computes each prompt
    in full)."""
    return int(cache["prompt_tokens"] - cache["reused_tokens"]) if cache else work.prompt_tokens


def merged(works: Sequence[Work]) -> Work:
    """The sum of tallies (of one cache)."""
    total = works[0].fork()
    counters = [f.name for f in fields(Work) if f.name not in ("shape", "prefixes")]
    for w in works:
        for name in counters:
            setattr(total, name, getattr(total, name) + getattr(w, name))
    return total


def traced_mixed(tracer: Tracer | None, parts: Sequence[tuple[LLM, Sequence[Any]]], call: Any, kind: str) -> Any:
    """``call()`` (a wrapper's mixed call), each part then traced once against its own view."""
    if tracer is None:
        return call()
    with tracer.mixed():
        outs = call()
    trace = tracer.generate if kind == "generate" else tracer.score
    for (view, requests), out in zip(parts, outs):
        trace(requests, out, view)
    return outs


COUNTED = ("matmul FLOPs a perfect prefix cache still needs (linear layers, attention QK^T and AV, lm_head "
           "where logits are read); norms, activations, softmax, embeddings and padding not counted")


def mode_rooflines(tracers: dict[str, Tracer | None], measured: dict[str, tuple[float, dict[str, float] | None]],
                   shapes: Sequence[tuple[int, int, int]] | None = None) -> dict[str, Any] | None:
    """The ``roofline`` of a bench report: the peak, then per mode its needed work, bound,
    measured seconds, efficiency and prompt tokens computed (``measured``: mode -> (seconds,
    prefix-cache delta)); None when a mode ran on a backend without a tracer."""
    if not tracers or any(t is None for t in tracers.values()):
        return None
    first = next(iter(tracers.values()))
    peak = model_peak(first.backend, shapes)
    modes = {}
    for mode, tracer in tracers.items():
        seconds, cache = measured[mode]
        modes[mode] = {**bounded(tracer.work, peak["gflops"], seconds),
                       "computed_prompt_tokens": computed_tokens(tracer.work, cache), "trace_s": tracer.seconds}
    return {"peak": peak, "model": first.work.shape.as_dict(), "counted": COUNTED, "modes": modes}
