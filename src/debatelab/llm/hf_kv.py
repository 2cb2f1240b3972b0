"""Batches whose rows start from cached prompt prefixes of different lengths.

Row i reuses ``shared_i`` cached tokens and computes its ``new_i`` remaining ones. The batch is
laid out as ``[pad | cached_i | pad | new_i]``: the cached parts end together at column C (the
longest reuse), the new parts end together at the last column. Padding columns are masked, and
positions come from the mask's running sum (HF ``generate`` derives them the same way), so every
token keeps the position it had when its keys were computed. The holes between a row's cached and
new tokens are masked like left padding is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # transformers without per-layer caches: supports_prefix_cache() says no
    DynamicLayer = object  # type: ignore[assignment,misc]

from .options import BackendOptions
from .prefix_cache import PrefixCache


@dataclass
class Row:
    tokens: list[int]
    entry: int | None = None
    shared: int = 0
    group: str | None = None
    """The request's group, given to the entry this row leaves in the store."""

    @property
    def new(self) -> int:
        return len(self.tokens) - self.shared


@dataclass
class Layout:
    ids: torch.Tensor  # [B, C + N]: cached region then new region
    mask: torch.Tensor
    cached: int  # C
    cache: Any  # a DynamicCache holding the cached region (empty when C == 0); None without a store

    @property
    def positions(self) -> torch.Tensor:
        return (self.mask.cumsum(-1) - 1).clamp(min=0)


def supports_prefix_cache(model: Any) -> bool:
    """Plain full-attention layers only: sliding-window, chunked or linear-attention caches
    (Mistral, Gemma 2/3, hybrids) store something other than every token's keys."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers without per-layer caches
        return False
    cache = DynamicCache(config=model.config)
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def prefix_cache_budget(options: BackendOptions, device: torch.device) -> int:
    """Bytes for the prefix store: the option, or a third of the memory available now."""
    if options.prefix_cache_mb is not None:
        return options.prefix_cache_mb * 2**20
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 3
    return _available_ram() // 3


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # no procfs (macOS): assume 6 GiB, so a 2 GiB store
        return 6 * 2**30


def look_up(store: PrefixCache, seqs: Sequence[list[int]], groups: Sequence[str | None]) -> list[Row]:
    rows = []
    for seq, group in zip(seqs, groups):
        entry, shared = store.lookup(seq)
        rows.append(Row(seq, entry, shared, group))
    return rows


def layout(rows: Sequence[Row], store: PrefixCache | None, model: Any, pad: int, device: Any,
           extra: int = 0) -> Layout:
    """The batch of ``rows``; its cache has room for ``extra`` more tokens per row (the tokens a
    generation adds, or an option tree's nodes) before it must grow."""
    cached = max((r.shared for r in rows), default=0)
    width = max(r.new for r in rows)
    ids, mask = [], []
    for r in rows:
        head, tail = cached - r.shared, width - r.new
        ids.append([pad] * head + r.tokens[: r.shared] + [pad] * tail + r.tokens[r.shared :])
        mask.append([0] * head + [1] * r.shared + [0] * tail + [1] * r.new)
    ids_t = torch.tensor(ids, device=device)
    mask_t = torch.tensor(mask, device=device)
    capacity = cached + width + extra
    return Layout(ids_t, mask_t, cached, _build_cache(rows, store, model, cached, capacity) if store else None)


class ReservedLayer(DynamicLayer):  # type: ignore[misc,valid-type]
    """A cache layer that writes new keys and values into room reserved for them.

    transformers' DynamicLayer concatenates on every update, so each decoding step copies the
    whole cache of every layer: at 32 rows of 600 tokens that copying was half of a step's time
    on 2 CPU cores (torch.profiler, ``aten::cat``). Here a step writes one column; ``keys`` and
    ``values`` are views of the filled part, so attention sees the same numbers. Room runs out
    only if a call adds more tokens than reserved; the layer then grows by doubling.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        rows, heads, _, dim = key_states.shape
        self._keys = torch.empty(rows, heads, self.capacity, dim, dtype=key_states.dtype, device=self.device)
        self._values = torch.empty(rows, heads, self.capacity, value_states.shape[-1], dtype=value_states.dtype,
                                   device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._grow(end)
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self._view(end)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:
            self._view(max(self.length + tokens_to_remove, 0))
        elif tokens_to_remove > 0:
            super().crop(tokens_to_remove)  # transformers' own error for the legacy form

    def _view(self, length: int) -> None:
        self.length = length
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def _grow(self, needed: int) -> None:
        room = max(needed, 2 * self._keys.shape[-2])
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], room, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)


def _build_cache(rows: Sequence[Row], store: PrefixCache, model: Any, cached: int, capacity: int) -> Any:
    """The reused prefixes as one cache with room for ``capacity`` tokens per row; an empty one
    (a handle on what the call computes) when no row reuses anything."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.layers = [ReservedLayer(capacity) for _ in cache.layers]
    if not cached:
        return cache
    sample = next(store.get(r.entry) for r in rows if r.entry is not None)
    heads, _, dim = sample.keys[0].shape
    shape = (len(rows), heads, cached, dim)
    for layer in range(len(sample.keys)):
        block = cache.layers[layer]
        block.lazy_initialization(sample.keys[0].new_empty(shape), sample.values[0].new_empty(shape))
        block._keys[:, :, :cached] = 0  # holes and left padding: masked, but never uninitialised memory
        block._values[:, :, :cached] = 0
        for i, r in enumerate(rows):
            if r.shared:
                entry = store.get(r.entry)
                block._keys[i, :, cached - r.shared : cached] = entry.keys[layer][:, : r.shared]
                block._values[i, :, cached - r.shared : cached] = entry.values[layer][:, : r.shared]
        block._view(cached)
    for r in rows:
        if r.entry is not None and r.shared:
            store.take(r.entry, r.shared, r.group)
    return cache


def layer_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.54


def remember(store: PrefixCache, rows: Sequence[Row], lay: Layout, cache: Any) -> None:
    """Store each row's whole prompt (cached part + new part) from the batch's cache, which may
    hold generated tokens after the prompt columns; those are not part of any later prompt."""
    tensors = layer_tensors(cache)
    end = lay.ids.shape[1]
    for i, r in enumerate(rows):
        cols = torch.cat([torch.arange(lay.cached - r.shared, lay.cached), torch.arange(end - r.new, end)])
        cols = cols.to(lay.ids.device)
        keys = [k[i].index_select(1, cols) for k, _ in tensors]
        values = [v[i].index_select(1, cols) for _, v in tensors]
        store.insert(r.tokens, keys, values, source=r.entry, shared=r.shared, group=r.group)
