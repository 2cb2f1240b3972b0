"""Scoring fixed answers ("0".."10" + end of turn) in one forward pass, as a token tree.

Every option's tokens (but its last, which is only predicted) become nodes of a per-row tree:
options that share leading tokens share nodes ("1" is both the answer 1 and the start of "10").
All nodes go through the model at once after the context's cache; a 4D mask lets each node see
the context and its own ancestors only, and each node sits at the position it would have in its
own option's sequence. On SmolLM2 the 11 survey answers are 11 nodes, instead of 11 separate
forwards of 2-3 tokens each. Needs an attention that takes arbitrary masks (sdpa or eager, the
transformers defaults), not flash-attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class OptionTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # -1: the context
    depths: list[int] = field(default_factory=list)
    options: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    """Per option: its first token (scored from the context), then (node, next token) pairs."""


def option_tree(suffixes: Sequence[list[int]]) -> OptionTree:
    tree = OptionTree()
    nodes: dict[tuple[int, ...], int] = {}
    for suffix in suffixes:
        steps = []
        for m in range(1, len(suffix)):
            steps.append((_node(tree, nodes, tuple(suffix[:m])), suffix[m]))
        tree.options.append((suffix[0], steps))
    return tree


def _node(tree: OptionTree, nodes: dict[tuple[int, ...], int], prefix: tuple[int, ...]) -> int:
    if prefix not in nodes:
        parent = _node(tree, nodes, prefix[:-1]) if len(prefix) > 1 else -1
        nodes[prefix] = len(tree.tokens)
        tree.tokens.append(prefix[-1])
        tree.parents.append(parent)
        tree.depths.append(len(prefix) - 1)
    return nodes[prefix]


def tree_mask(trees: Sequence[OptionTree], ctx_mask: torch.Tensor, width: int, dtype: torch.dtype | None) -> torch.Tensor:
    """[B, 1, width, ctx + width] mask of where each node may attend: boolean (sdpa takes it
    whatever the compute dtype, e.g. under 4-bit quantisation), or additive in ``dtype`` (eager)."""
    allowed = torch.zeros(len(trees), width, width, dtype=torch.bool)
    for row, tree in enumerate(trees):
        for q in range(width):
            node = q if q < len(tree.tokens) else -1
            allowed[row, q, q] = True  # padding nodes see themselves: no fully masked row
            while node >= 0:
                allowed[row, q, node] = True
                node = tree.parents[node]
    ctx = ctx_mask.bool().cpu()[:, None, :].expand(-1, width, -1)
    keep = torch.cat([ctx, allowed], dim=-1)[:, None]
    if dtype is None:
        return keep.to(ctx_mask.device)
    mask = torch.zeros(keep.shape, dtype=dtype)
    return mask.masked_fill(~keep, torch.finfo(dtype).min).to(ctx_mask.device)


def node_logprobs(model: Any, cache_kwarg: str, trees: Sequence[OptionTree], ctx_mask: torch.Tensor,
                  cache: Any, pad: int) -> torch.Tensor | None:
    """[B, nodes, vocab] next-token log-softmax at every tree node (None: no option has a
    second token); the cache is cropped back to the contexts afterwards."""
    width = max(len(t.tokens) for t in trees)
    if not width:
        return None
    device = ctx_mask.device
    ids = torch.tensor([t.tokens + [pad] * (width - len(t.tokens)) for t in trees], device=device)
    depth = torch.tensor([t.depths + [0] * (width - len(t.depths)) for t in trees], device=device)
    positions = ctx_mask.sum(-1, keepdim=True) + depth
    sdpa = getattr(model.config, "_attn_implementation", "sdpa") == "sdpa"
    mask = tree_mask(trees, ctx_mask, width, None if sdpa else model.get_input_embeddings().weight.dtype)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_kwarg: cache})
    cache.crop(-width)
    return torch.log_softmax(out.logits.float(), dim=-1)


def option_sums(trees: Sequence[OptionTree], first: torch.Tensor, later: torch.Tensor | None) -> list[list[float]]:
    """Each option's log-probability: its first token from ``first`` [B, vocab], each further
    token from its parent node's row of ``later``."""
    return [[float(first[row, head] + sum(later[row, node, nxt] for node, nxt in steps)) if steps else
             float(first[row, head]) for head, steps in tree.options] for row, tree in enumerate(trees)]
