"""vLLM backend (``vllm:<hub id or local dir>``): vLLM's offline engine on a CUDA GPU.

Why vLLM: a wave is many prompts sharing long prefixes (persona, topic, debate so far); vLLM batches
them continuously and, with prefix caching on, computes each shared prefix once.

Generation: ONE ``LLM.generate`` call per wave, one ``SamplingParams`` per request (its own seed,
temperature, top-p, max_tokens, stop strings); end-of-turn is a stop token, as in ``hf:``.

Option scoring reads the first answer token: one batched 1-token greedy call with ``logprobs=k`` on
prompts ending in the assistant prefix; options match by token id, scores are renormalised over the
options (log P(option | a valid answer)), and options outside the top k get -inf. Two-token options
(the "10" of tokenizers that split digits) take a second batched call on prompt + "1":
P("10") = P("1") P("0" | "1"); it also makes "1" mean "1, then no further digit":
P("1") (1 - P(next token starts with a digit | "1")). Approximation: mass outside the top k counts
as "no further digit". Unlike ``hf:``, single tokens are not multiplied by P(end | option): models
answering a bare number barely differ, random test models do. Option lists with a 3+-token option
fall back to prompt log-probabilities of each option plus the end token (``hf:``'s definition),
which vLLM computes without its prefix cache: a full prefill per option.

Adapters per request: ``BackendOptions.adapter``, or several in ``VLLMSettings(adapters=...)``, turn
on vLLM's LoRA (``max_lora_rank``: their largest ``r``, at least 16; only a LoRA-enabled engine takes
adapters later). ``llm.with_adapter(path)`` returns a light view on the SAME engine that sends that
adapter's ``LoRARequest`` with each request (None: base model), with its own identity and usage:
one view per agent. Views of one engine ``shares_engine`` each other, and ``generate_mixed(parts)``
/ ``score_options_mixed(parts)`` send the requests of several views in ONE engine call, each with
its view's adapter, and split the results back per view. Load one engine per model and process:
each reserves ``gpu_memory_utilization`` of the GPU.

Safety as in ``hf:``: ``load_format="safetensors"`` unless ``allow_pickle``; adapters need
``adapter_model.safetensors``; ``trust_remote_code`` off. Only :func:`load_vllm` imports vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import DebatelabError, first_line
from .base import LLM, Completion, Conditioning, GenerateRequest, OptionScores, Prompt, Purpose, ScoreRequest, Usage
from .chat import local_conditioning
from .options import BackendOptions
from .vllm_support import (  # noqa: F401  (re-exported: the backend's public helpers)
    VLLMSettings,
    renormalise,
    fast_path_ok,
    second_step_tokens,
    option_logprobs,
    continuation_logprob,
    finish,
    sampling_kwargs,
    engine_kwargs,
    lora_rank_slot,
    adapter_rank,
    uses_chat_template,
    encode,
    find_end_of_turn,
    INSTALL_HINT,
    Adapter,
    TopTokens,
)
from .wrappers import engine_peer, unwrap


class VLLMEngine:
    """One loaded vLLM model, shared by every adapter view of it. ``sampling_params`` and
    ``lora_request`` are vLLM's classes (injected, so tests can run the logic without vLLM)."""

    def __init__(self, llm: Any, identity: dict[str, Any], *, sampling_params: Callable[..., Any],
                 lora_request: Callable[..., Any] | None = None, max_lora_rank: int = 0,
                 top_logprobs: int = 20, allow_pickle: bool = False):
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.identity = identity
        self.sampling_params = sampling_params
        self._lora_request = lora_request
        self.max_lora_rank = max_lora_rank
        self.top_logprobs = top_logprobs
        self.allow_pickle = allow_pickle
        self.end_of_turn = find_end_of_turn(self.tokenizer)
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id, self.end_of_turn) if i is not None}
        config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
        self.max_len: int | None = getattr(config, "max_model_len", None)  # None: no pre-check
        self._loras: dict[str, tuple[Any, dict[str, str]]] = {}  # folder -> (LoRARequest, identity)
        self.calls = 0
        """Engine calls made so far (tests check one per wave)."""

    def adapter(self, adapter: Adapter) -> tuple[Any, dict[str, str] | None]:
        """(LoRARequest, identity) of an adapter folder, registered on first use; (None, None): base."""
        if adapter is None:
            return None, None
        key = str(Path(adapter).expanduser().resolve())
        if key not in self._loras:
            self._loras[key] = self._register(Path(key))
        return self._loras[key]

    def lora(self, adapter: Adapter) -> Any:
        return self.adapter(adapter)[0]

    def _register(self, folder: Path) -> tuple[Any, dict[str, str]]:
        if self._lora_request is None or not self.max_lora_rank:
            raise DebatelabError("this vllm model was loaded without LoRA: load it with an adapter, or list "
                                 "every adapter up front in VLLMSettings(adapters=...)")
        rank = adapter_rank(folder)
        if rank > self.max_lora_rank:
            raise DebatelabError(f"adapter {folder} has rank {rank}, above this engine's max_lora_rank "
                                 f"{self.max_lora_rank}; list it in VLLMSettings(adapters=...) at load")
        from .weights import check_adapter_weights, dir_fingerprint

        check_adapter_weights(folder, self.allow_pickle)
        lora_id = len(self._loras) + 1  # vLLM wants a distinct positive int per adapter
        return (self._lora_request(f"adapter-{lora_id}", lora_id, str(folder)),
                {"path": str(folder), "weights": dir_fingerprint(folder)})

    def precheck(self, prompt_len: int, max_tokens: int) -> str | None:
        """Why vLLM would reject this one request (which would fail the whole call), or None."""
        if max_tokens < 1:
            return f"max_tokens must be at least 1 for vllm, got {max_tokens}"
        if self.max_len is not None and prompt_len >= self.max_len:
            return f"prompt has {prompt_len} tokens; the model's context is {self.max_len} (max_model_len)"
        return None

    def run(self, prompts: Sequence[list[int]], params: Sequence[Any], loras: Sequence[Any]) -> list[Any]:
        """ONE engine call for the whole list: vLLM batches it and computes shared prefixes once."""
        if not prompts:
            return []
        self.calls += 1
        lora = list(loras) if any(x is not None for x in loras) else None
        return self.llm.generate([{"prompt_token_ids": p} for p in prompts], list(params),
                                 use_tqdm=False, lora_request=lora)

    def top_params(self) -> Any:  # one greedy token, with the top-k alternatives at its position
        return self.sampling_params(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)

    def prompt_params(self) -> Any:  # one greedy token, with each prompt token's own log-probability
        return self.sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0)

    def top_tokens(self, output: Any) -> TopTokens:
        step = output.outputs[0].logprobs[0]
        decode = self.tokenizer.decode
        return {t: (lp.logprob, decode([t]) if lp.decoded_token is None else lp.decoded_token) for t, lp in step.items()}

    def terminator(self, prompt: Prompt) -> list[int]:
        """What must follow an option for it to be the whole answer (as in ``hf:``)."""
        if uses_chat_template(self.tokenizer, prompt) and self.end_of_turn is not None:
            return [self.end_of_turn]
        return list(self.tokenizer("\n", add_special_tokens=False).input_ids)


class VLLMLLM(LLM):
    """A view of a :class:`VLLMEngine` with one adapter (or none); cheap to create."""

    def __init__(self, engine: VLLMEngine, adapter: Adapter = None):
        self.engine = engine
        self.adapter = adapter
        self._lora, self._adapter_identity = engine.adapter(adapter)
        self.usage: Usage = Usage()

    def with_adapter(self, adapter: Adapter) -> VLLMLLM:
        """The same engine, sending ``adapter``'s LoRARequest with every request (None: the base)."""
        return VLLMLLM(self.engine, adapter)

    def shares_engine(self, other: LLM) -> bool:
        peer = engine_peer(other)
        return isinstance(peer, VLLMLLM) and peer.engine is self.engine

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        return local_conditioning(self.engine.tokenizer, prompt, purpose)

    def identity(self) -> dict[str, Any]:
        extra = {"adapter": dict(self._adapter_identity)} if self._adapter_identity else {}
        return {**self.engine.identity, **extra}

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        results = self._generate(requests, [self] * len(requests))
        self.usage.calls += 1
        return results

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        results = self._score(requests, [self] * len(requests))
        self.usage.calls += 1
        return results

    def generate_mixed(self, parts: Sequence[tuple[LLM, Sequence[GenerateRequest]]]) -> list[list[Completion]]:
        """ONE engine call for the requests of every part, each run on its part's view's adapter;
        the results come back per part, in order, and each view counts its own usage."""
        views, flat, owners = self._flatten(parts)
        return _split(self._generate(flat, owners), [len(requests) for _, requests in parts], views)

    def score_options_mixed(self, parts: Sequence[tuple[LLM, Sequence[ScoreRequest]]]) -> list[list[OptionScores]]:
        views, flat, owners = self._flatten(parts)
        return _split(self._score(flat, owners), [len(requests) for _, requests in parts], views)

    def _flatten(self, parts: Sequence[tuple[LLM, Sequence[Any]]]) -> tuple[list[VLLMLLM], list[Any], list[VLLMLLM]]:
        """(each part's view, every request in part order, the view each request belongs to)."""
        views = []
        for view, _ in parts:
            bare = unwrap(view)
            if not (isinstance(bare, VLLMLLM) and self.shares_engine(bare)):
                raise ValueError(f"a mixed vllm call takes views of this engine only, not {type(bare).__name__}")
            views.append(bare)
        flat = [r for _, requests in parts for r in requests]
        owners = [view for view, (_, requests) in zip(views, parts) for _ in requests]
        return views, flat, owners

    # ---- generation -------------------------------------------------------------------
    def _generate(self, requests: Sequence[GenerateRequest], owners: list[VLLMLLM]) -> list[Completion]:
        """Request k runs on ``owners[k]``'s adapter and counts in its usage (calls not counted)."""
        eng = self.engine
        ids = [encode(eng.tokenizer, r.prompt) for r in requests]
        errors = [eng.precheck(len(i), r.max_tokens) for i, r in zip(ids, requests)]
        results = [Completion("", error=e) for e in errors]  # the live ones are replaced below
        live = [k for k, e in enumerate(errors) if e is None]
        stop_ids = sorted(eng.stop_ids)
        params = [eng.sampling_params(**sampling_kwargs(requests[k], stop_ids)) for k in live]
        for k, out in zip(live, eng.run([ids[k] for k in live], params, [owners[k]._lora for k in live])):
            results[k] = owners[k]._completion(requests[k], out)
        return results

    def _completion(self, req: GenerateRequest, out: Any) -> Completion:
        first = out.outputs[0]
        if first.finish_reason not in ("stop", "length"):
            return Completion("", error=f"vllm ended the request with finish_reason {first.finish_reason!r}")
        text, n, reason = finish(first.text, first.token_ids, first.finish_reason, req.stop, self.engine.stop_ids)
        self._count(out, n)
        return Completion(text, len(out.prompt_token_ids), n, reason)

    def _count(self, out: Any, completion_tokens: int) -> None:
        self.usage.prompt_tokens += len(out.prompt_token_ids)
        self.usage.completion_tokens += completion_tokens
        cached = getattr(out, "num_cached_tokens", None) or 0  # absent in older vLLM
        self.usage.extra["cached_prompt_tokens"] = self.usage.extra.get("cached_prompt_tokens", 0) + cached

    # ---- option scoring ---------------------------------------------------------------
    def _score(self, requests: Sequence[ScoreRequest], owners: list[VLLMLLM]) -> list[OptionScores]:
        """At most two engine calls: the first tokens together with every fallback prompt, then
        the second steps of two-token options. Request k runs on ``owners[k]``'s adapter."""
        eng = self.engine
        loras = [o._lora for o in owners]
        ctx = [encode(eng.tokenizer, r.prompt) for r in requests]
        opts = [[list(eng.tokenizer(o, add_special_tokens=False).input_ids) for o in r.options] for r in requests]
        errors = [eng.precheck(len(c) + max(map(len, o), default=0) + 1, 1) for c, o in zip(ctx, opts)]
        live = [k for k, e in enumerate(errors) if e is None]
        fast = [k for k in live if fast_path_ok(opts[k])]
        slow = [(k, ctx[k] + ids + eng.terminator(requests[k].prompt))
                for k in live if k not in fast for ids in opts[k]]
        outs = eng.run([ctx[k] for k in fast] + [p for _, p in slow],
                       [eng.top_params()] * len(fast) + [eng.prompt_params()] * len(slow),
                       [loras[k] for k in fast] + [loras[k] for k, _ in slow])
        scores = self._second_steps(fast, ctx, opts, {k: eng.top_tokens(o) for k, o in zip(fast, outs)}, loras)
        fallback: dict[int, list[float]] = {}
        for (k, prompt), out in zip(slow, outs[len(fast):]):
            fallback.setdefault(k, []).append(continuation_logprob(_prompt_logprobs(out), prompt, len(ctx[k])))
        scores.update((k, renormalise(lps)) for k, lps in fallback.items())
        for k in live:
            owners[k].usage.prompt_tokens += len(ctx[k])
        return [OptionScores(scores[k]) if e is None else OptionScores((), error=e) for k, e in enumerate(errors)]

    def _second_steps(self, fast: list[int], ctx: list[list[int]], opts: list[list[list[int]]],
                      firsts: dict[int, TopTokens], loras: list[Any]) -> dict[int, tuple[float, ...]]:
        pairs = [(k, t) for k in fast for t in second_step_tokens(opts[k], firsts[k])]
        outs = self.engine.run([ctx[k] + [t] for k, t in pairs], [self.engine.top_params()] * len(pairs),
                               [loras[k] for k, _ in pairs])
        after: dict[int, dict[int, TopTokens]] = {k: {} for k in fast}
        for (k, t), out in zip(pairs, outs):
            after[k][t] = self.engine.top_tokens(out)
        return {k: option_logprobs(opts[k], firsts[k], after[k]) for k in fast}


def _split(results: list[Any], sizes: list[int], views: list[VLLMLLM]) -> list[list[Any]]:
    """``results`` cut back into one list per part; each part's view counts the call once."""
    out, start = [], 0
    for size in sizes:
        out.append(results[start : start + size])
        start += size
    for view in {id(v): v for v in views}.values():
        view.usage.calls += 1
    return out


def _prompt_logprobs(out: Any) -> list[dict[int, float] | None]:
    return [None if d is None else {t: lp.logprob for t, lp in d.items()} for d in out.prompt_logprobs]


# ---- loading ------------------------------------------------------------------------------
def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise DebatelabError(f"backend 'vllm' needs vLLM ({exc.name or 'vllm'} missing): {INSTALL_HINT}") from None
    return vllm


def check_device(options: BackendOptions) -> None:
    import torch

    if options.device == "cpu":
        raise DebatelabError("the vllm backend runs on CUDA only; use hf:<model> for device 'cpu'")
    if not torch.cuda.is_available():
        raise DebatelabError("the vllm backend needs a CUDA GPU and torch sees none; use hf:<model> on CPU")
    if options.quantization != "none":
        raise DebatelabError(f"quantization {options.quantization!r} is for hf:; with vllm load a pre-quantized "
                             "(AWQ, GPTQ or FP8) checkpoint instead")


def resolve_source(name: str, options: BackendOptions) -> tuple[str, dict[str, Any]]:
    """(what vLLM loads, the identity before dtype) -- as ``hf:`` resolves local folders."""
    from .weights import check_model_weights, dir_fingerprint

    local = Path(name).expanduser()
    if not local.is_dir() and name.startswith(("/", ".", "~")):
        raise DebatelabError(f"cannot load model {name!r}: no such directory")
    source = str(local.resolve()) if local.is_dir() else name
    identity: dict[str, Any] = {"backend": "vllm", "model": source, "revision": options.revision}
    if local.is_dir():
        check_model_weights(local, "model folder", options.allow_pickle)
        identity["weights"] = dir_fingerprint(local)
    return source, identity


def load_vllm(name: str, options: BackendOptions, settings: VLLMSettings | None = None) -> VLLMLLM:
    """The registry's factory for ``vllm:<name>``; returns the view with ``options.adapter``."""
    settings = settings or VLLMSettings()
    if not name:
        raise DebatelabError("model 'vllm:' needs a hub id or local dir after 'vllm:'")
    vllm = import_vllm()
    check_device(options)
    source, identity = resolve_source(name, options)
    folders = [Path(a).expanduser() for a in [options.adapter, *settings.adapters] if a]
    # at least vLLM's default 16, so adapters of the usual ranks can join later through with_adapter
    rank = max([16, *(lora_rank_slot(adapter_rank(f)) for f in folders)]) if folders else 0
    kwargs = engine_kwargs(source, options, settings, rank)
    try:
        llm = vllm.LLM(**kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise DebatelabError(f"cannot load model {source!r} with vllm: {first}") from exc
    from vllm.lora.request import LoRARequest

    identity.update(dtype=kwargs["dtype"], top_logprobs=settings.top_logprobs)
    engine = VLLMEngine(llm, identity, sampling_params=vllm.SamplingParams, lora_request=LoRARequest,
                        max_lora_rank=rank, top_logprobs=settings.top_logprobs, allow_pickle=options.allow_pickle)
    for folder in folders:
        engine.lora(folder)  # validate and register now: a bad adapter fails the load, not a run
    return VLLMLLM(engine, options.adapter)
