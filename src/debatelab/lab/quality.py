"""Reply quality: how a method's replies read, apart from where their attitudes go.

- **Perplexity under the base model** (:func:`reply_perplexities`): each reply scored on its own,
  as a document. The conditioning is one start token and nothing else: the tokenizer's BOS token
  (SmolLM2-Instruct's is ``<|im_start|>``), or, without one, its EOS token as the document
  boundary, which is lm-evaluation-harness's convention for rolling log-likelihoods. No persona,
  no debate history and no chat template: every method's replies meet the same, neutral context,
  so what differs is the text itself (a persona's vocabulary included: compare methods, not
  roles). A chat model's BOS opens a turn, so the first token is scored where a role name would
  be; that costs every method alike. Every token of the reply is scored; a reply longer than the
  model's context is cut to it; an empty reply has no perplexity (NaN).
- **Repetition rate** (:func:`repetition_rate`): within one reply, the share of its word n-grams
  that repeat an earlier one, 1 − distinct / total (0: no n-gram twice; approaching 1: a loop).
  Words are runs of letters and digits (an apostrophe inside a word kept), lower-cased; a reply
  with fewer than n words has no rate (NaN).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..analysis.frames import RunData, load
from ..errors import DebatelabError

if TYPE_CHECKING:
    from ..llm.hf import HFLLM

REPLY_COLUMNS = ["debate_id", "topic", "role", "agent_index", "iteration", "text"]
LOGIT_BUDGET = 64 * 2**20  # logits per batch (256 MiB in float32): 16 replies of 80 tokens at SmolLM2's 49k vocabulary
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def reply_texts(run_dir: Path) -> pd.DataFrame:
    """The replies of a run's finished debates (:data:`REPLY_COLUMNS`), in the analysis views'
    order (topic, repetition, debate, iteration)."""
    return replies_of(load(run_dir, complete_only=True))


def replies_of(run: RunData) -> pd.DataFrame:
    """:func:`reply_texts` of a run already loaded."""
    turns = run.turns[REPLY_COLUMNS].copy()
    turns["text"] = turns["text"].fillna("").astype(str)
    return turns.reset_index(drop=True)


def repetition_rate(texts: Sequence[str], n: int = 3) -> np.ndarray:
    """Per text, 1 − distinct/total of its word ``n``-grams (NaN with fewer than ``n`` words)."""
    if isinstance(texts, str):
        raise DebatelabError("repetition_rate takes a sequence of texts, not one string")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DebatelabError(f"repetition_rate: n must be a positive integer, not {n!r}")
    out = np.full(len(texts), np.nan)
    for i, text in enumerate(texts):
        words = WORD.findall(str(text).lower())
        grams = [tuple(words[k:k + n]) for k in range(len(words) - n + 1)]
        if grams:
            out[i] = 1.0 - len(set(grams)) / len(grams)
    return out


def reply_perplexities(llm: HFLLM, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """Per text exp(mean negative log-likelihood of its tokens) under ``llm.model``, after one start
    token (module docstring). Batches of similar length, right-padded: with causal attention
    padding after a text cannot change its tokens' logits."""
    import torch

    if isinstance(texts, str):
        raise DebatelabError("reply_perplexities takes a sequence of texts, not one string")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DebatelabError(f"reply_perplexities: batch_size must be a positive integer, not {batch_size!r}")
    encoded = [_encode(llm, str(t)) for t in texts]
    out = np.full(len(encoded), np.nan)
    order = sorted((i for i, ids in enumerate(encoded) if len(ids) > 1), key=lambda i: len(encoded[i]))
    with torch.inference_mode():
        for batch in _batches(order, [len(ids) for ids in encoded], batch_size, _vocab(llm)):
            for i, nll in zip(batch, _batch_nll(llm, [encoded[i] for i in batch])):
                out[i] = math.exp(nll)
    return out


def _vocab(llm: HFLLM) -> int:
    return int(getattr(llm.model.config, "vocab_size", None) or len(llm.tokenizer))


def _batches(order: list[int], lengths: list[int], batch_size: int, vocab: int) -> list[list[int]]:
    """Up to ``batch_size`` texts each (shortest first), fewer where their logits would pass
    :data:`LOGIT_BUDGET` values: a batch's logits are texts x longest x vocabulary."""
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[i] * vocab <= LOGIT_BUDGET:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _start_token(tokenizer: Any) -> int:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise DebatelabError("reply perplexity needs a tokenizer with a BOS or EOS token to start each reply")
    return int(start)


def _encode(llm: HFLLM, text: str) -> list[int]:
    """The start token and the text's tokens, cut to the model's context (nothing to score: [start])."""
    ids = [_start_token(llm.tokenizer), *llm.tokenizer(text, add_special_tokens=False).input_ids]
    limit = getattr(llm.model.config, "max_position_embeddings", None)
    return ids[:limit] if isinstance(limit, int) and limit > 1 else ids


def _batch_nll(llm: HFLLM, rows: list[list[int]]) -> list[float]:
    """Mean next-token NLL of every row's tokens after the first, in float32."""
    import torch

    width = max(len(r) for r in rows)
    pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else rows[0][0]
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, :len(row)] = torch.tensor(row)
        mask[k, :len(row)] = 1
    logits = llm.model(input_ids=ids.to(llm.device), attention_mask=mask.to(llm.device)).logits
    out = []
    for k, row in enumerate(rows):  # one row at a time: a float32 copy of all logits is vocab x width x batch
        scores = logits[k, :len(row) - 1].float().log_softmax(-1)
        targets = torch.tensor(row[1:], device=scores.device)
        out.append(float(-scores.gather(-1, targets[:, None]).mean()))
    return out
