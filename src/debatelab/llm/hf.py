"""transformers backend: real batched generation with left padding and per-request seeds.

Sampling happens in a logits processor that draws each row from its own seeded generator and
then forces that token, so one batched ``generate`` call serves requests with different seeds,
temperatures and top-p values. Stop strings are checked per row, against that row's own list.

A row's floats depend, in their last bits, on the shape it is computed in (micro-batch rows, left
padding, a prefix taken from the prefix cache): float32 matrix multiplies pick kernels by shape.
Repeating a call repeats it bit for bit; a resumed run or another ``batch_size`` differs by up to
about 1e-5 in survey probabilities and expected scores (within ``debatelab.compare.PRECISION``;
README, "Reliability"). ``batch_size=1`` with ``prefix_cache_mb=0`` computes every prompt alone
and in full, which makes results bit-identical at one-at-a-time speed.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import os
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator, Sequence

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from . import chat
from . import hf_methods
from .base import (LLM, Completion, Conditioning, GenerateRequest, Intervention, OptionScores, Prompt, Purpose,
                   ScoreRequest, Usage)
from .hf_kv import Layout, Row, layout, look_up, prefix_cache_budget, remember, supports_prefix_cache
from .hf_options import OptionTree, node_logprobs, option_sums, option_tree
from .options import BackendOptions
from .prefix_cache import PrefixCache


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


class HFLLM(LLM):
    """A transformers model and tokenizer; ``prefix_cache`` (None: off) reuses prompt prefixes."""

    def __init__(self, model: Any, tokenizer: Any, identity: dict[str, Any], options: BackendOptions):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.options = options
        self._identity = identity
        self.usage: Usage = Usage()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.device = next(model.parameters()).device
        # transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps forward
        params = inspect.signature(inner.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.end_of_turn = chat.find_end_of_turn(tokenizer)
        self.stop_ids = self._stop_token_ids(model)
        # Generation is fully specified per call; never inherit sampling defaults a model ships in
        # generation_config.json (repetition penalties, top-k...), which would silently change
        # "greedy" surveys and seeded replies.
        model.generation_config = GenerationConfig(eos_token_id=sorted(self.stop_ids), pad_token_id=tokenizer.pad_token_id)
        self._trees: dict[tuple[tuple[str, ...], tuple[int, ...]], OptionTree] = {}
        budget = prefix_cache_budget(options, self.device)
        self.prefix_cache = PrefixCache(budget) if budget and supports_prefix_cache(model) else None
        self.intervention = Intervention()
        self._steer: tuple[int, torch.Tensor] | None = None  # (layer, scaled vector) while this view computes
        self._directions: dict[str, tuple[torch.Tensor, str]] = {}  # shared by views: computed once per model

    def _stop_token_ids(self, model: Any) -> set[int]:
        shipped = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        shipped = shipped if isinstance(shipped, list) else [shipped]
        return {i for i in [self.tokenizer.eos_token_id, self.end_of_turn, *shipped] if i is not None}

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    # ---- inference-time methods (debatelab.methods) ----------------------------------------
    def with_intervention(self, intervention: Intervention) -> HFLLM:
        """A view on this loaded model that applies ``intervention``; its identity names the
        method (at strength 0 too, so results never mix) and, for steering, the direction's SHA.
        A steered view keeps its own prefix cache (its keys and values differ), at a quarter of the
        budget, so a few steered seats stay within the memory one cache would take."""
        view = copy.copy(self)
        view.intervention, view._identity = intervention, dict(self._identity)
        if intervention.contrast is not None:
            view._identity["contrastive"] = intervention.contrast
        steer = intervention.steer
        if steer is not None:
            key = hf_methods.prompts_key(steer)
            if key not in self._directions:
                self._directions[key] = hf_methods.steering_direction(self, steer)
            direction, sha = self._directions[key]
            view._identity["steering"] = {"layer": steer.layer, "scale": steer.scale, "direction": sha,
                                          "prompts": len(steer.persona_prompts) + len(steer.default_prompts)}
            if steer.scale != 0:
                view._steer = (steer.layer, direction * steer.scale)
                view.prefix_cache = PrefixCache(self.prefix_cache.budget // 4) if self.prefix_cache else None
        return view

    def _steered(self) -> ContextManager[None]:
        return nullcontext() if self._steer is None else hf_methods.steered(self.model, *self._steer)

    def _contrasts(self, req: GenerateRequest | ScoreRequest) -> bool:
        return req.contrast is not None and bool(self.intervention.contrast)

    # ---- the prompt-prefix cache, as the LLM contract exposes it --------------------------
    def cache_stats(self) -> dict[str, float] | None:
        return None if self.prefix_cache is None else self.prefix_cache.stats.as_dict()

    def clear_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def release(self, groups: Sequence[str]) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.release(groups)

    @contextmanager
    def without_cache(self) -> Iterator[None]:
        store, self.prefix_cache = self.prefix_cache, None
        try:
            yield
        finally:
            self.prefix_cache = store

    # ---- prompt rendering -------------------------------------------------------------
    def uses_chat_template(self, prompt: Prompt) -> bool:
        return chat.uses_chat_template(self.tokenizer, prompt)

    def render(self, prompt: Prompt) -> str:
        return chat.render(self.tokenizer, prompt)

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        return chat.local_conditioning(self.tokenizer, prompt, purpose)

    def encode(self, prompt: Prompt) -> list[int]:
        # A chat template already writes any BOS token; a raw prompt gets the tokenizer's own.
        special = not self.uses_chat_template(prompt)
        return self.tokenizer(self.render(prompt), add_special_tokens=special).input_ids

    def _rows(self, encoded: list[list[int]], requests: Sequence[GenerateRequest | ScoreRequest]) -> list[Row]:
        """Each prompt with the longest cached prefix it can reuse (none without a prefix cache)."""
        if self.prefix_cache is None:
            return [Row(seq) for seq in encoded]
        self.prefix_cache.tick()
        return look_up(self.prefix_cache, encoded, [r.group for r in requests])

    def _batches(self, rows: list[Row], budgets: Sequence[int]) -> list[list[int]]:
        """Indices grouped into micro-batches: rows of one token budget together (a survey's 8
        tokens never decode for as long as a reply's 96 beside it), each budget's rows by how
        many tokens each must compute (less padding)."""
        order = sorted(range(len(rows)), key=lambda i: (budgets[i], rows[i].new), reverse=True)
        size, batches = self.options.batch_size, []
        for _, same in itertools.groupby(order, key=lambda i: budgets[i]):
            group = list(same)
            batches += [group[i : i + size] for i in range(0, len(group), size)]
        return batches

    def _layout(self, rows: list[Row], extra: int = 0) -> Layout:
        if self.prefix_cache is not None:  # an earlier micro-batch of this call may have replaced an entry
            for r in rows:
                if r.entry is not None and r.entry not in self.prefix_cache.entries:
                    r.entry, r.shared = None, 0
        return layout(rows, self.prefix_cache, self.model, self.tokenizer.pad_token_id, self.device, extra)

    # ---- generation ---------------------------------------------------------------------
    def _over_context(self, rows: list[Row], extra: Sequence[int]) -> dict[int, str]:
        """Rows whose prompt plus ``extra`` new tokens exceed the model's context: each fails as
        its own request (its debate fails, visibly and resumably) instead of the forward pass
        running out of memory or reading positions the model never learnt."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit:
            return {}
        return {i: f"prompt of {len(r.tokens)} tokens + {n} new exceeds the model's context of {limit} tokens"
                for i, (r, n) in enumerate(zip(rows, extra)) if len(r.tokens) + n > limit}

    def _fitting_batches(self, rows: list[Row], over: dict[int, str], budgets: Sequence[int]) -> list[list[int]]:
        batches = [[i for i in b if i not in over] for b in self._batches(rows, budgets)]
        return [b for b in batches if b]

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        rows = self._rows([self.encode(r.prompt) for r in requests], requests)
        budgets = [r.max_tokens for r in requests]
        over = self._over_context(rows, budgets)
        results: list[Completion | None] = [Completion("", error=over[i]) if i in over else None
                                            for i in range(len(requests))]
        self._run_parts(requests, rows, (over, budgets), self._generate_batch, results)
        self.usage.calls += 1
        return [r for r in results if r is not None]

    def _run_parts(self, requests: Sequence[Any], rows: list[Row], fit: tuple[dict[int, str], Sequence[int]],
                   compute: Any, results: list[Any]) -> None:
        """``compute(requests, rows)`` on every micro-batch part (plain, then contrastive), steered
        when this view steers; each answer lands at its request's index of ``results``. ``fit``:
        the rows over the context (left out) and each row's token budget (see ``_batches``)."""
        with self._steered():
            for batch in self._fitting_batches(rows, *fit):
                for part in self._split_contrast(batch, requests):
                    for i, out in zip(part, compute([requests[i] for i in part], [rows[i] for i in part])):
                        results[i] = out

    def _split_contrast(self, batch: list[int], requests: Sequence[GenerateRequest | ScoreRequest]) -> list[list[int]]:
        """A micro-batch as its plain rows, then its contrastive rows (those go through another path)."""
        parts = [[i for i in batch if not self._contrasts(requests[i])], [i for i in batch if self._contrasts(requests[i])]]
        return [p for p in parts if p]

    def _generate_batch(self, reqs: list[GenerateRequest], rows: list[Row]) -> list[Completion]:
        lay = self._layout(rows, max(r.max_tokens for r in reqs))
        cache = lay.cache
        config = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in reqs), do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.stop_ids),
        )
        width = lay.ids.shape[1]
        processors = [_RowSampler(reqs, self.device)]
        if self._contrasts(reqs[0]):  # _split_contrast: all rows of this batch, or none
            ids, mask = hf_methods.left_padded([self.encode(r.contrast) for r in reqs], self.tokenizer.pad_token_id,
                                               self.device)
            processors.insert(0, hf_methods.contrast_processor(self.model, self.intervention.contrast, ids, mask))
        out = self.model.generate(
            input_ids=lay.ids, attention_mask=lay.mask, generation_config=config,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([_RowStop(reqs, width, self.tokenizer)]),
            **({self._cache_kwarg: cache} if cache is not None else {}),
        )
        if self.prefix_cache is not None:
            remember(self.prefix_cache, rows, lay, cache)
        return [self._finish(req, row[width:].tolist(), len(r.tokens)) for req, row, r in zip(reqs, out, rows)]

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
        rows = self._rows([self.encode(r.prompt) for r in requests], requests)
        # Tokens an option adds, its terminator included (the length of its path in the cached
        # option tree): exact, where the tokenizer writes the terminator as several tokens.
        longest = [max((len(steps) + 1 for _, steps in self._option_tree(r).options), default=0) for r in requests]
        over = self._over_context(rows, longest)
        results: list[OptionScores | None] = [OptionScores((), error=over[i]) if i in over else None
                                              for i in range(len(requests))]
        self._run_parts(requests, rows, (over, longest), self._score_batch, results)
        self.usage.calls += 1
        return [r for r in results if r is not None]

    def _score_batch(self, reqs: list[ScoreRequest], rows: list[Row]) -> list[OptionScores]:
        """Each option's log-probability; under contrastive decoding, each of its tokens is
        scored by the combination of the persona and the contrast contexts' log-softmaxes."""
        trees = [self._option_tree(r) for r in reqs]
        first, later = self._node_logprobs(rows, trees)
        if self._contrasts(reqs[0]):  # _split_contrast: all rows of this batch, or none
            strength = float(self.intervention.contrast or 0)
            first_n, later_n = self._node_logprobs(self._rows([self.encode(r.contrast) for r in reqs], reqs), trees)
            first = hf_methods.contrast(first, first_n, strength)
            later = None if later is None else hf_methods.contrast(later, later_n, strength)
        return [OptionScores(tuple(s)) for s in option_sums(trees, first, later)]

    def _node_logprobs(self, rows: list[Row], trees: list[OptionTree]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward over the new part of the contexts, then one forward over every row's
        options at once, laid out as a token tree (options sharing a first token share its node):
        the contexts' next-token log-softmax, and every node's."""
        lay = self._layout(rows, max(len(t.tokens) for t in trees))
        cache = lay.cache
        new = slice(lay.cached, None)
        ctx = self.model(input_ids=lay.ids[:, new], attention_mask=lay.mask, position_ids=lay.positions[:, new],
                         use_cache=True, logits_to_keep=1, **({self._cache_kwarg: cache} if cache is not None else {}))
        first = torch.log_softmax(ctx.logits[:, -1].float(), dim=-1)
        cache = ctx["cache"] if "cache" in ctx else ctx["past_key_values"]
        if self.prefix_cache is not None:
            remember(self.prefix_cache, rows, lay, cache)
        later = node_logprobs(self.model, self._cache_kwarg, trees, lay.mask, cache, self.tokenizer.pad_token_id)
        self.usage.prompt_tokens += sum(len(r.tokens) for r in rows)
        return first, later

    def _option_tree(self, req: ScoreRequest) -> OptionTree:
        """The tree of each option's tokens plus the terminator that makes it the whole answer;
        built once per option set and terminator (every survey of a run asks the same 11)."""
        end = tuple(self._terminator(req.prompt))
        key = (req.options, end)
        if key not in self._trees:
            self._trees[key] = option_tree([self.tokenizer(o, add_special_tokens=False).input_ids + list(end)
                                            for o in req.options])
        return self._trees[key]
