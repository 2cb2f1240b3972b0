"""A roofline for the transformers backends: the work a run strictly needed, against the
machine's two measured roofs (:mod:`.peak`): the matrix-multiply peak, and the memory bandwidth
at which decoding streams its key/value cache.

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

**Needed bytes.** A token decoded at position ``p`` reads the keys and values of the ``p + 1``
positions it attends to, in every layer: ``(p + 1) x kv_token_bytes`` with ``kv_token_bytes =
2 (K and V) x layers x kv_heads x head_dim x`` the element size of the model's dtype (grouped-
query attention shares ``kv_heads`` < ``heads``). They are counted for the ``n - 1`` generated
tokens fed back per request and for every option-tree node, the calls a batch of rows runs one
position at a time; there each row reads its own cache, so the bytes do not shrink with the batch
(SmolLM2-135M in float32: 46,080 bytes per context token, 27.6 MB per row per step at context
600, against 0.31 GFLOP). Prefill (prompt tokens) is left out: its attention reuses each key for
a whole block of queries and is compute-bound. Weight reads, shared by every row of a batch, and
activations are not counted either: leaving bytes out keeps the memory bound a lower bound.

This is a matmul-and-KV-read roofline: norms, activations, softmax, rotary embeddings, embedding
lookups, sampling and micro-batch padding are not counted, the compute peak is that of
``torch.matmul`` and the bandwidth that of ``torch.sum`` over a tensor far beyond any cache. The
bound is the larger of the two roofs' times (``roofline_bound_s``); ``bound_s`` and
``efficiency`` stay the FLOP roof's alone.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Sequence

from ..llm.base import LLM, Completion, GenerateRequest, ScoreRequest
from ..llm.wrappers import unwrap
from . import peak  # noqa: F401  (the module the roofs are measured in: patch SQUARES etc. on roofline.peak)
from .peak import (  # noqa: F401  (the measures are re-exported: callers import them from here)
    measure_bandwidth, measure_peak, mlp_dims, model_bandwidth, model_dtype, model_peak, peak_shapes, text_config)


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
    kv_heads: int
    """Key/value heads (fewer than ``heads`` under grouped-query attention)."""
    dtype_bytes: int
    """Element size of the model's dtype, that of its key/value cache."""

    @property
    def kv_token_bytes(self) -> int:
        """Bytes of keys and values one context position holds across the layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def layer_flops(self, start: int, end: int) -> tuple[float, float]:
        """(linear, attention) FLOPs of the tokens at positions ``start .. end - 1``."""
        n = max(end - start, 0)
        return 2.0 * self.linear_params * n, 4.0 * self.layers * self.heads * self.head_dim * _keys(start, end)

    def kv_read_bytes(self, start: int, end: int) -> int:
        """Key/value bytes the tokens at positions ``start .. end - 1`` read, decoded one by one."""
        return self.kv_token_bytes * _keys(start, end)

    def as_dict(self) -> dict[str, int]:
        return {**self.__dict__, "kv_token_bytes": self.kv_token_bytes}


def _keys(start: int, end: int) -> int:
    """Keys the positions ``start .. end - 1`` attend to: the sum of ``p + 1`` over the span."""
    return (end * (end + 1) - start * (start + 1)) // 2 if end > start else 0


def model_shape(model: Any) -> ModelShape:
    """The shape of a transformers causal LM, its linear weights counted from its modules."""
    from torch import nn

    config = text_config(model)
    head = model.get_output_embeddings()
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    lm_head = head.in_features * head.out_features if isinstance(head, nn.Linear) else head.weight.numel()
    hidden, intermediate = mlp_dims(model)
    return ModelShape(linear, lm_head, config.num_hidden_layers, heads, head_dim, hidden, intermediate,
                      kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                      dtype_bytes=model_dtype(model).itemsize)


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
    """FLOPs, key/value bytes read and token counts of calls, against a perfect prefix cache
    (shared by forks)."""

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
    kv_read_bytes: int = 0
    """Key/value bytes read by tokens decoded one position at a time (generated, option nodes)."""

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

    def _decode(self, start: int, end: int) -> None:
        """Tokens at ``start .. end - 1`` through the layers, each reading its cached context."""
        self._layers(start, end)
        self.kv_read_bytes += self.shape.kv_read_bytes(start, end)

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
        self._decode(len(ids), len(ids) + max(n - 1, 0))
        self.generated_tokens += n
        if reply:
            self.prefixes.insert([*ids, *reply])

    def options(self, ids: Sequence[int], depths: Sequence[int]) -> None:
        """An option tree after context ``ids`` (already counted): logits at the context's last
        token and at every node (``depths``: the nodes whose next-token distribution is read)."""
        self._logits(1 + len(depths))
        self.option_nodes += len(depths)
        for depth in depths:
            self._decode(len(ids) + depth, len(ids) + depth + 1)

    def as_dict(self) -> dict[str, Any]:
        return {"needed_gflop": self.flops / 1e9, "linear_gflop": self.linear_flops / 1e9,
                "attention_gflop": self.attention_flops / 1e9, "lm_head_gflop": self.lm_head_flops / 1e9,
                "prompts": self.prompts, "prompt_tokens": self.prompt_tokens,
                "needed_prompt_tokens": self.needed_prompt_tokens, "generated_tokens": self.generated_tokens,
                "option_nodes": self.option_nodes, "kv_read_gb": self.kv_read_bytes / 1e9,
                "reuse_bound_share": reuse_share(self)}


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


# ---- the report ------------------------------------------------------------------------------
def bounded(work: Work, peak_gflops: float, measured_s: float, bandwidth_gb_s: float | None = None) -> dict[str, Any]:
    """Needed work, its time at the matmul peak (``bound_s``), the measured time and bound /
    measured (``efficiency``); with the read bandwidth, also the KV reads' time at it
    (``memory_bound_s``), the larger roof (``roofline_bound_s``) and it over measured."""
    bound = work.flops / (peak_gflops * 1e9) if peak_gflops else float("inf")
    out = {**work.as_dict(), "bound_s": bound, "measured_s": measured_s, "efficiency": _ratio(bound, measured_s)}
    if bandwidth_gb_s is not None:
        memory = work.kv_read_bytes / (bandwidth_gb_s * 1e9) if bandwidth_gb_s else float("inf")
        roof = max(bound, memory)
        out.update(memory_bound_s=memory, roofline_bound_s=roof, roofline_efficiency=_ratio(roof, measured_s))
    return out


def _ratio(bound: float, measured_s: float) -> float | None:
    return bound / measured_s if measured_s > 0 else None


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
           "where logits are read) against the matmul peak, and the key/value bytes each token decoded one at a "
           "time (generated, option nodes; not prefill) reads against the read bandwidth; norms, activations, "
           "softmax, embeddings, weight reads and padding not counted")


def mode_rooflines(tracers: dict[str, Tracer | None], measured: dict[str, tuple[float, dict[str, float] | None]],
                   shapes: Sequence[tuple[int, int, int]] | None = None) -> dict[str, Any] | None:
    """The ``roofline`` of a bench report: the peak and bandwidth, then per mode its needed work,
    bounds, measured seconds, efficiencies and prompt tokens computed (``measured``: mode ->
    (seconds, prefix-cache delta)); None when a mode ran on a backend without a tracer."""
    if not tracers or any(t is None for t in tracers.values()):
        return None
    first = next(iter(tracers.values()))
    peak, bandwidth = model_peak(first.backend, shapes), model_bandwidth(first.backend)
    modes = {}
    for mode, tracer in tracers.items():
        seconds, cache = measured[mode]
        modes[mode] = {**bounded(tracer.work, peak["gflops"], seconds, bandwidth["gb_s"]),
                       "computed_prompt_tokens": computed_tokens(tracer.work, cache), "trace_s": tracer.seconds}
    return {"peak": peak, "bandwidth": bandwidth, "model": first.work.shape.as_dict(), "counted": COUNTED,
            "modes": modes}
