"""transformers backend: real batched generation with left padding and per-request seeds.

Sampling happens in a logits processor that draws each row from its own seeded generator and
then forces that token, so one batched ``generate`` call serves requests with different seeds,
temperatures and top-p values. Stop strings are checked per row, against that row's own list.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from ..errors import DebatelabError
from .base import Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from .options import BackendOptions


class _RowSampler(LogitsProcessor):
    """Per-row temperature / top-p sampling with per-row generators; greedy where temperature 0."""

    def __init__(self, requests: Sequence[GenerateRequest], device: torch.device):
        self.requests = requests
        self.generators = []
        for req in requests:
            seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
            self.generators.append(torch.Generator(device=device).manual_seed(seed))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        for row, req in enumerate(self.requests):
            chosen[row] = _sample_row(scores[row].float(), req, self.generators[row])
        forced = torch.full_like(scores, -math.inf)
        forced[torch.arange(scores.shape[0]), chosen] = 0.0
        return forced


def _sample_row(logits: torch.Tensor, req: GenerateRequest, gen: torch.Generator) -> torch.Tensor:
    if req.temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < req.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return torch.multinomial(probs, 1, generator=gen)[0]


class _RowStop(StoppingCriteria):
    """Stops each row at its own max_tokens or at the first of its own stop strings."""

    def __init__(self, requests: Sequence[GenerateRequest], prompt_len: int, tokenizer: Any):
        self.requests = requests
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer
        self.tail = 1 + max((len(s) for r in requests for s in r.stop), default=0)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, req in enumerate(self.requests):
            if new.shape[1] >= req.max_tokens:
                done[row] = True
            elif req.stop:
                text = self.tokenizer.decode(new[row, -self.tail :], skip_special_tokens=True)
                done[row] = any(s in text for s in req.stop)
        return done


class HFLLM:
    def __init__(self, model: Any, tokenizer: Any, identity: dict[str, Any], options: BackendOptions):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.options = options
        self._identity = identity
        self.usage = Usage()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.device = next(model.parameters()).device
        # transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps forward
        params = inspect.signature(inner.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.end_of_turn = self._find_end_of_turn()
        self.stop_ids = self._stop_token_ids(model)
        # Generation is fully specified per call; never inherit sampling defaults a model ships in
        # generation_config.json (repetition penalties, top-k...), which would silently change
        # "greedy" surveys and seeded replies.
        model.generation_config = GenerationConfig(eos_token_id=sorted(self.stop_ids), pad_token_id=tokenizer.pad_token_id)

    def _find_end_of_turn(self) -> int:
        """The token a chat template writes after an assistant message (<|im_end|>, <|eot_id|>,
        <end_of_turn>...); the tokenizer's eos when there is no template or it cannot tell."""
        eos = self.tokenizer.eos_token_id
        if not getattr(self.tokenizer, "chat_template", None):
            return eos
        sentinel = "SENTINEL-7f3a"
        try:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}], tokenize=False)
        except Exception:  # templates may raise on anything unusual; eos is the safe fallback
            return eos
        after = self.tokenizer(text.split(sentinel, 1)[-1], add_special_tokens=False).input_ids
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        return after[0] if after and after[0] in special else eos

    def _stop_token_ids(self, model: Any) -> set[int]:
        shipped = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        shipped = shipped if isinstance(shipped, list) else [shipped]
        return {i for i in [self.tokenizer.eos_token_id, self.end_of_turn, *shipped] if i is not None}

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    # ---- prompt rendering -------------------------------------------------------------
    def uses_chat_template(self, prompt: Prompt) -> bool:
        return bool(prompt.messages) and bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, prompt: Prompt) -> str:
        if not self.uses_chat_template(prompt):
            return prompt.flat_text()
        messages = [m.as_dict() for m in prompt.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + prompt.assistant_prefix

    def encode(self, prompt: Prompt) -> list[int]:
        # A chat template already writes any BOS token; a raw prompt gets the tokenizer's own.
        special = not self.uses_chat_template(prompt)
        return self.tokenizer(self.render(prompt), add_special_tokens=special).input_ids

    def _batches(self, encoded: list[list[int]]) -> list[list[int]]:
        """Indices grouped into micro-batches of similar length (less padding waste)."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        size = self.options.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _pad_left(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    # ---- generation ---------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        encoded = [self.encode(r.prompt) for r in requests]
        results: list[Completion | None] = [None] * len(requests)
        for batch in self._batches(encoded):
            outs = self._generate_batch([requests[i] for i in batch], [encoded[i] for i in batch])
            for i, out in zip(batch, outs):
                results[i] = out
        self.usage.calls += 1
        return [r for r in results if r is not None]

    def _generate_batch(self, reqs: list[GenerateRequest], seqs: list[list[int]]) -> list[Completion]:
        ids, mask = self._pad_left(seqs)
        config = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in reqs), do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.stop_ids),
        )
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config,
            logits_processor=LogitsProcessorList([_RowSampler(reqs, self.device)]),
            stopping_criteria=StoppingCriteriaList([_RowStop(reqs, ids.shape[1], self.tokenizer)]),
        )
        return [self._finish(req, row[ids.shape[1] :].tolist(), len(seq)) for req, row, seq in zip(reqs, out, seqs)]

    def _finish(self, req: GenerateRequest, new: list[int], prompt_tokens: int) -> Completion:
        # Cut to this row's own budget first: a row stopped early by _RowStop is then padded with
        # pad (= often eos) tokens while longer rows go on, and that padding is no real end of turn.
        new = new[: req.max_tokens]
        ends = [k for k, token in enumerate(new) if token in self.stop_ids]
        hit_eos = bool(ends)
        if hit_eos:
            new = new[: ends[0]]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = [text.index(s) for s in req.stop if s and s in text]
        if cut:
            text = text[: min(cut)]
        reason = "stop" if hit_eos or cut else "length"
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += len(new)
        return Completion(text, prompt_tokens, len(new), reason)

    # ---- option scoring -----------------------------------------------------------------
    def _terminator(self, prompt: Prompt) -> list[int]:
        """What must follow an option for it to be the whole answer: end-of-turn in chat, else newline."""
        if self.uses_chat_template(prompt):
            return [self.end_of_turn]
        return self.tokenizer("\n", add_special_tokens=False).input_ids

    @torch.inference_mode()
    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        encoded = [self.encode(r.prompt) for r in requests]
        results: list[OptionScores | None] = [None] * len(requests)
        for batch in self._batches(encoded):
            scores = self._score_batch([requests[i] for i in batch], [encoded[i] for i in batch])
            for i, s in zip(batch, scores):
                results[i] = s
        self.usage.calls += 1
        return [r for r in results if r is not None]

    def _score_batch(self, reqs: list[ScoreRequest], seqs: list[list[int]]) -> list[OptionScores]:
        """One forward over the contexts, then one small forward per option on their KV cache.

        The cache is cropped back to the contexts after each option instead of being copied once
        per option: copies cost 11x the cache's memory (gigabytes for long debates) and time.
        """
        ids, mask = self._pad_left(seqs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ctx = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(ctx.logits[:, -1].float(), dim=-1)
        cache = ctx["cache"] if "cache" in ctx else ctx["past_key_values"]
        scores = [[0.0] * len(r.options) for r in reqs]
        for j in range(max(len(r.options) for r in reqs)):
            suffixes = [self._suffix(r, j) for r in reqs]
            later = self._suffix_logprobs(suffixes, mask, cache)
            for row, suffix in enumerate(suffixes):
                if suffix:
                    rest = sum(later[row, k - 1, suffix[k]] for k in range(1, len(suffix)))
                    scores[row][j] = float(first[row, suffix[0]] + rest)
            cache.crop(-max(len(s) for s in suffixes))  # negative: drop the suffix tokens again
        self.usage.prompt_tokens += sum(len(s) for s in seqs)
        return [OptionScores(tuple(s)) for s in scores]

    def _suffix(self, req: ScoreRequest, j: int) -> list[int]:
        """Option j's tokens plus the terminator; empty when the request has fewer options."""
        if j >= len(req.options):
            return []
        return self.tokenizer(req.options[j], add_special_tokens=False).input_ids + self._terminator(req.prompt)

    def _suffix_logprobs(self, suffixes: list[list[int]], ctx_mask: torch.Tensor, cache: Any) -> torch.Tensor:
        width = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id
        suf = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=self.device)
        suf_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in suffixes], device=self.device)
        positions = ctx_mask.sum(-1, keepdim=True) + torch.arange(width, device=self.device)
        out = self.model(input_ids=suf, attention_mask=torch.cat([ctx_mask, suf_mask], dim=1),
                         position_ids=positions, **{self._cache_kwarg: cache})
        return torch.log_softmax(out.logits.float(), dim=-1)


# ---- loading ----------------------------------------------------------------------------
def resolve_device_dtype(options: BackendOptions) -> tuple[str, torch.dtype]:
    """Device and dtype for ``options``; sets torch's CPU threads when ``options.threads`` is given.

    CPU defaults, chosen with ``debatelab bench`` on the embedded model (2-core AMD EPYC with
    avx512_bf16, 40 debates in flight; numbers in the bench JSON):

    - ``threads=None`` keeps torch's default of one intra-op thread per physical core. On 2 cores,
      2 threads gave 19.5 wave tokens/s against 11.3 with 1 (a wave's prompt processing is compute
      bound); even one request at a time was not faster on 1 thread (5.3 vs 5.7 tokens/s).
    - ``dtype=auto`` stays float32 on CPU. bfloat16 is about 1.75x faster, but its survey
      distributions missed the tolerance (mean |delta expected score| 0.12 > 0.1, mean TV 0.033 <
      0.05, over 120 survey prompts; ``debatelab.bench.agreement``), and its results depend on the
      batch: only 2 of 10 debates had the same transcript one request at a time as in a wave, so
      ``batch_size`` and ``max_in_flight`` would no longer be mere runtime knobs. float32 gave
      identical transcripts in both modes. Ask for ``dtype: bfloat16`` where speed matters more.
    """
    cuda = torch.cuda.is_available()
    if options.device == "cuda" and not cuda:
        raise DebatelabError("device 'cuda' requested but torch sees no CUDA device")
    device = "cuda" if options.device == "cuda" or (options.device == "auto" and cuda) else "cpu"
    name = options.dtype if options.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if options.threads and device == "cpu":
        torch.set_num_threads(options.threads)
    return device, getattr(torch, name)


def _quantization_config(options: BackendOptions, device: str) -> Any:
    if options.quantization == "none":
        return None
    if device != "cuda":
        raise DebatelabError(f"quantization {options.quantization!r} needs CUDA (bitsandbytes); use 'none' on CPU")
    from transformers import BitsAndBytesConfig

    if options.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def load_pretrained(source: str, options: BackendOptions, identity: dict[str, Any]) -> HFLLM:
    device, dtype = resolve_device_dtype(options)
    if Path(source).is_dir():
        check_model_weights(Path(source), "model folder", options.allow_pickle)
    # trust_remote_code is always the option's bool (transformers reads None as "ask on the
    # terminal"); use_safetensors=None lets transformers fall back to pickles, so only the opt-in.
    common = {"revision": options.revision, "trust_remote_code": options.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=None if options.allow_pickle else True,
            quantization_config=_quantization_config(options, device), **common,
        )
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc, options) from exc
    if options.quantization == "none":
        model = model.to(device)
    ident = {**identity, "dtype": str(dtype).removeprefix("torch."), "quantization": options.quantization}
    if options.adapter:
        model, ident["adapter"] = _apply_adapter(model, Path(options.adapter).expanduser(), options.allow_pickle)
    return HFLLM(model, tokenizer, ident, options)


def _load_error(source: str, exc: Exception, options: BackendOptions) -> DebatelabError:
    """One line for a failed load; where a safety default caused it, the line names the opt-in."""
    first = _first_line(exc)
    if "custom code" in first and not options.trust_remote_code:
        first += f" It would run on load; only if you trust its author, set {_TRUST_CODE_OPT_IN}."
    elif "safetensors" in first and not options.allow_pickle and not Path(source).is_dir():  # a hub id
        first += f" Only safetensors weights load unless you set {_PICKLE_OPT_IN} (pickles can run code)."
    return DebatelabError(f"cannot load model {source!r}: {first}")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _apply_adapter(model: Any, adapter: Path, allow_pickle: bool) -> tuple[Any, dict[str, str]]:
    """Base + LoRA adapter; the adapter's content fingerprint joins the model identity, so a
    tuned model never shares run directories or debate ids with its base."""
    if not (adapter / "adapter_config.json").is_file():
        raise DebatelabError(f"not a PEFT adapter folder (no adapter_config.json): {adapter}")
    check_adapter_weights(adapter, allow_pickle)
    try:
        from peft import PeftModel
    except ImportError:
        raise DebatelabError("adapters need peft: pip install 'debatelab[train]'") from None
    try:
        tuned = PeftModel.from_pretrained(model, str(adapter)).eval()
    except (OSError, ValueError) as exc:
        raise DebatelabError(f"cannot load adapter {adapter}: {_first_line(exc)}") from exc
    return tuned, {"path": str(adapter.resolve()), "weights": _dir_fingerprint(adapter)}


# ---- untrusted files ----------------------------------------------------------------------
# Loading a pickle (``torch.load``) can run arbitrary code, so weights load from safetensors only
# unless the user opts in. These are the pickled names transformers and PEFT fall back to.
_PICKLED_WEIGHTS = ("pytorch_model*.bin", "adapter_model.bin")
_PICKLE_OPT_IN = "`backend: {allow_pickle: true}`"
_TRUST_CODE_OPT_IN = "`backend: {trust_remote_code: true}`"


def _pickled_files(folder: Path) -> list[str]:
    return sorted(f.name for pattern in _PICKLED_WEIGHTS for f in folder.glob(pattern))


def check_model_weights(folder: Path, what: str, allow_pickle: bool, opt_in: str = "") -> None:
    """Refuse a local model folder whose only weights are pickles, before transformers reads them."""
    pickled = _pickled_files(folder)
    if allow_pickle or not pickled or any(folder.glob("*.safetensors")):
        return  # no pickles, or safetensors that transformers prefers; missing weights it reports
    raise DebatelabError(
        f"{what} {folder} has only pickled weights ({', '.join(pickled)}), which can run code when loaded; "
        f"{opt_in or 'use safetensors weights, or if you trust the files set ' + _PICKLE_OPT_IN}"
    )


def check_adapter_weights(adapter: Path, allow_pickle: bool, opt_in: str = "") -> None:
    """Refuse an adapter folder without adapter_model.safetensors: PEFT would unpickle the .bin."""
    if allow_pickle or (adapter / "adapter_model.safetensors").is_file():
        return
    found = ", ".join(_pickled_files(adapter)) or "no weights"
    raise DebatelabError(
        f"adapter {adapter} has no adapter_model.safetensors ({found}); pickled weights can run code when "
        f"loaded: {opt_in or 'use safetensors, or if you trust the files set ' + _PICKLE_OPT_IN}"
    )


def load_hf(name: str, options: BackendOptions) -> HFLLM:
    local = Path(name).expanduser()
    if not local.is_dir() and name.startswith(("/", ".", "~")):
        # clearly a path, not a hub id: say so instead of the hub's "Repo id must be..." message
        raise DebatelabError(f"cannot load model {name!r}: no such directory")
    source = str(local.resolve()) if local.is_dir() else name
    identity = {"backend": "hf", "model": source, "revision": options.revision}
    if local.is_dir():
        identity["weights"] = _dir_fingerprint(local)
    return load_pretrained(source, options, identity)


def _dir_fingerprint(path: Path) -> str:
    """Content marker for a local model dir: config text plus size, head and tail of each weight file
    (reading whole multi-GB files on every start would be too slow; mtimes change on a plain copy).
    The weight files are the safetensors, or, in a folder without any, the pickles that only
    ``allow_pickle`` loads (so folders that load safetensors keep their fingerprints)."""
    import hashlib

    h = hashlib.sha256()
    weights = sorted(path.glob("*.safetensors")) or [path / name for name in _pickled_files(path)]
    for f in sorted(path.glob("*.json")) + weights:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 16))
            fh.seek(max(0, size - (1 << 16)))
            h.update(fh.read())
    return h.hexdigest()[:16]
