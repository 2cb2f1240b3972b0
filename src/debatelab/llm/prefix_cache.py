"""Prompt KV reuse across calls: an agent's next prompt starts with most of its last one.

In a debate every prompt of one agent begins with the same background, topic and history, and
each new prompt only adds the turns since the agent last spoke (or the survey question). The
store keeps each prompt's key/value tensors and finds, for a new prompt, the stored prompt that
shares the longest token prefix with it; only the rest is computed. A causal model's keys and
values for a token prefix do not depend on what follows, so reuse changes nothing but float
rounding (the tests compare against the uncached path). That rounding is real: float32 kernels
round a row differently in other shapes (MKL picks its matrix-multiply kernel by the number of
rows, attention sees other padding), so a prompt computed from a reused prefix, in another
micro-batch or after a resume differs from a full computation in the last bits. Run exports are
therefore equal at ``debatelab.compare.PRECISION`` for floats (text and integers exactly).

Lookup goes by chained hashes of fixed-size token blocks (as vLLM's automatic prefix caching
does), then token by token inside the last block. Memory is bounded by ``budget_bytes``:

- an entry that a new prompt extends (the same agent, one step later) is replaced by it, so an
  active agent holds about one entry;
- when full, the least recently used *idle* entries are dropped: those untouched for longer than
  the longest gap ever seen between two uses of one entry (learned as the run goes; in a
  3-agent debate an agent's prompts are at most 3 calls apart). Those belong to finished
  debates. Entries still in use are never evicted for a newcomer, so a wave larger than the
  budget keeps hitting for the agents it holds instead of thrashing. (A fixed threshold of 8
  calls cost the second group of a 160-debate run most of its reuse: the first group's entries
  blocked the store for 8 of its 13 calls.)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

BLOCK = 16
"""Tokens per hashed block."""
GROUP_SHARE = 0.25
"""Share of an entry that a prompt of the same group (debate) must repeat to replace it."""


@dataclass
class Entry:
    """One prompt's tokens and per-layer keys/values, each ``[kv_heads, len(tokens), head_dim]``."""

    tokens: tuple[int, ...]
    keys: list[Any]
    values: list[Any]
    last_used: int = 0
    hashes: list[int] = field(default_factory=list)
    group: str | None = None
    """The group of the request that left it (see ``LLM.release``)."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    evictions: int = 0
    refused: int = 0
    released: int = 0

    def as_dict(self) -> dict[str, float]:
        share = self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return {**self.__dict__, "reused_share": share}


def block_hashes(tokens: Sequence[int], limit: int | None = None) -> Iterator[int]:
    """Chained hashes of the full blocks of ``tokens`` (hash k covers tokens[: (k+1)*BLOCK]),
    lazily: a lookup stops hashing at its first miss."""
    end = len(tokens) if limit is None else min(limit, len(tokens))
    h = 0
    for start in range(0, end - BLOCK + 1, BLOCK):
        h = hash((h, tuple(tokens[start : start + BLOCK])))
        yield h


class PrefixCache:
    def __init__(self, budget_bytes: int, replace_share: float = 0.75):
        self.budget = budget_bytes
        self.longest_gap = 1
        """Most calls seen between two uses of one entry; idle longer than this means unused."""
        self.replace_share = replace_share
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # LRU order, oldest first
        self.index: dict[int, dict[int, None]] = {}  # block hash -> ids of entries holding it (ordered set)
        self.used = 0
        self.clock = 0
        self.stats = CacheStats()
        self._next_id = 0

    def tick(self) -> None:
        """One model call has begun (idleness is counted in calls)."""
        self.clock += 1

    def lookup(self, tokens: Sequence[int]) -> tuple[int | None, int]:
        """(entry id, shared length) of the stored prompt sharing the longest prefix with
        ``tokens``, leaving at least one token to compute (its logits are needed)."""
        self.stats.lookups += 1
        self.stats.prompt_tokens += len(tokens)
        best, length = None, 0
        for h in block_hashes(tokens, len(tokens) - 1):
            holders = self.index.get(h)
            if not holders:
                break
            best = next(reversed(holders))  # the newest holder of the deepest shared block
        if best is not None:
            length = _common_prefix(self.entries[best].tokens, tokens, len(tokens) - 1)
            if length == 0:  # a hash collision
                best = None
        if best is not None:
            self.entries.move_to_end(best)
            entry = self.entries[best]
            self.longest_gap = max(self.longest_gap, self.clock - entry.last_used)
            entry.last_used = self.clock
            self.stats.hits += 1
            self.stats.reused_tokens += length
        return best, length

    def get(self, entry_id: int) -> Entry:
        return self.entries[entry_id]

    def insert(self, tokens: Sequence[int], keys: list[Any], values: list[Any],
               source: int | None = None, shared: int = 0, group: str | None = None) -> int | None:
        """Store one prompt; ``source``/``shared`` are what its lookup returned, ``group`` that of
        its request. Returns the new entry's id, or None where the budget refused it."""
        entry = Entry(tuple(tokens), keys, values, last_used=self.clock, group=group)
        replaced = self.entries.get(source) if source is not None else None
        if replaced is not None and not self._replaces(replaced, shared, group):
            replaced = None  # only a short shared head (e.g. a common system prompt): keep both
        freed = replaced.nbytes if replaced is not None else 0
        if not self._make_room(entry.nbytes - freed, keep=source):
            self.stats.refused += 1
            return None
        if replaced is not None:
            self._remove(source)
        return self._add(entry)

    def _replaces(self, entry: Entry, shared: int, group: str | None) -> bool:
        """Whether a prompt sharing ``shared`` tokens with ``entry`` takes its place: it covers
        most of it (the same agent one step later), or it comes from the same group and shares
        at least ``GROUP_SHARE`` of it. Within one debate only the agent itself shares that much
        (its background comes first); its old prompt's tail (a survey question, a reply task
        before the others spoke) is never repeated, and keeping it would hold the agent's
        history twice."""
        if shared >= self.replace_share * len(entry.tokens):
            return True
        return group is not None and entry.group == group and shared >= GROUP_SHARE * len(entry.tokens)

    def take(self, entry_id: int, shared: int, group: str | None = None) -> None:
        """Drop an entry a batch row has just copied, where that row will replace it
        (``_replaces``): holding both while the call runs would keep the row's keys and values
        twice. An entry shared only by its head stays for its own agent."""
        entry = self.entries.get(entry_id)
        if entry is not None and self._replaces(entry, shared, group):
            self._remove(entry_id)

    def release(self, groups: Sequence[str]) -> int:
        """Drop every entry left by requests of ``groups`` (finished debates: no later prompt
        extends them, and idle entries would otherwise stay until the store is full); how many."""
        names = set(groups)
        gone = [k for k, e in self.entries.items() if e.group is not None and e.group in names]
        for k in gone:
            self._remove(k)
        self.stats.released += len(gone)
        return len(gone)

    def clear(self) -> None:
        self.entries.clear()
        self.index.clear()
        self.used = 0

    def _make_room(self, needed: int, keep: int | None) -> bool:
        while self.used + needed > self.budget:
            idle = next((k for k, e in self.entries.items()
                         if k != keep and self.clock - e.last_used > self.longest_gap), None)
            if idle is None:
                return False
            self._remove(idle)
            self.stats.evictions += 1
        return True

    def _add(self, entry: Entry) -> int:
        entry_id, self._next_id = self._next_id, self._next_id + 1
        entry.hashes = list(block_hashes(entry.tokens))
        for h in entry.hashes:
            self.index.setdefault(h, {})[entry_id] = None
        self.entries[entry_id] = entry
        self.used += entry.nbytes
        return entry_id

    def _remove(self, entry_id: int) -> None:
        entry = self.entries.pop(entry_id)
        self.used -= entry.nbytes
        for h in entry.hashes:
            holders = self.index[h]
            holders.pop(entry_id, None)
            if not holders:
                del self.index[h]


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
