"""The prompt-prefix store: longest-prefix lookup, replacement along an agent's chain, memory bound."""

from __future__ import annotations

import torch

from debatelab.llm.prefix_cache import BLOCK, PrefixCache

LAYERS, HEADS, DIM = 2, 1, 4
BYTES_PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4  # keys and values, float32


def kv(tokens: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys/values whose content names the token and position, so a test can check what it got."""
    base = torch.tensor(tokens, dtype=torch.float32)[None, :, None].expand(HEADS, -1, DIM)
    return [base + layer for layer in range(LAYERS)], [-base - layer for layer in range(LAYERS)]


def store(cache: PrefixCache, tokens: list[int], source: int | None = None, shared: int = 0) -> int | None:
    return cache.insert(tokens, *kv(tokens), source=source, shared=shared)


def seq(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def test_longest_prefix_found_across_blocks_and_inside_the_last_one() -> None:
    cache = PrefixCache(budget_bytes=10**9)
    a = seq(0, 3 * BLOCK + 5)
    store(cache, a)
    store(cache, seq(1000, 3 * BLOCK))  # unrelated
    query = a[: 2 * BLOCK + 7] + [9999] * 20  # shares 2 whole blocks and 7 more tokens
    entry, shared = cache.lookup(query)
    assert shared == 2 * BLOCK + 7
    assert cache.get(entry).tokens[:shared] == tuple(query[:shared])
    assert cache.lookup([9999] * 40) == (None, 0)
    assert cache.lookup(a[: BLOCK - 1] + [7] * 30) == (None, 0)  # less than a block: not worth a lookup


def test_lookup_leaves_one_token_to_compute() -> None:
    cache = PrefixCache(budget_bytes=10**9)
    a = seq(0, 2 * BLOCK)
    store(cache, a)
    assert cache.lookup(a)[1] == len(a) - 1
    assert cache.lookup(a + [5, 6])[1] == len(a)


def test_an_extended_prompt_replaces_its_source_but_a_short_shared_head_does_not() -> None:
    cache = PrefixCache(budget_bytes=10**9)
    first = seq(0, 4 * BLOCK)
    src = store(cache, first)
    nxt = first[: 4 * BLOCK - 4] + seq(500, 30)  # the same agent one step later
    entry, shared = cache.lookup(nxt)
    assert entry == src
    new = store(cache, nxt, entry, shared)
    assert set(cache.entries) == {new}
    assert cache.used == len(nxt) * BYTES_PER_TOKEN
    other = first[:BLOCK] + seq(800, 3 * BLOCK)  # shares only a common head (e.g. a system prompt)
    entry, shared = cache.lookup(other)
    store(cache, other, entry, shared)
    assert len(cache.entries) == 2


def test_removing_one_holder_keeps_a_shared_block_findable() -> None:
    cache = PrefixCache(budget_bytes=10**9)
    head = seq(0, BLOCK)
    a = store(cache, head + seq(100, BLOCK))
    b = store(cache, head + seq(200, BLOCK))
    cache._remove(b)  # the newer holder of the shared head
    entry, shared = cache.lookup(head + [7] * 10)
    assert entry == a and shared == BLOCK


def test_budget_evicts_idle_entries_and_refuses_rather_than_evicting_active_ones() -> None:
    size = 2 * BLOCK * BYTES_PER_TOKEN
    cache = PrefixCache(budget_bytes=2 * size)
    old = store(cache, seq(0, 2 * BLOCK))
    cache.tick()
    active = store(cache, seq(100, 2 * BLOCK))
    refused = store(cache, seq(200, 2 * BLOCK))  # full, and `old` idle for 1 call only (not > 1)
    assert refused is None and cache.stats.refused == 1 and set(cache.entries) == {old, active}
    cache.tick()
    cache.lookup(seq(100, 2 * BLOCK) + [1])  # keeps `active` in use
    newcomer = store(cache, seq(300, 2 * BLOCK))  # `old` is now idle for 2 calls: evicted
    assert set(cache.entries) == {active, newcomer}
    assert cache.stats.evictions == 1 and cache.used <= cache.budget


def test_idleness_is_judged_against_the_longest_gap_seen_between_uses() -> None:
    size = 2 * BLOCK * BYTES_PER_TOKEN
    cache = PrefixCache(budget_bytes=2 * size)
    slow = store(cache, seq(0, 2 * BLOCK))
    for _ in range(3):
        cache.tick()
    cache.lookup(seq(0, 2 * BLOCK) + [1])  # an agent that speaks every 3 calls
    assert cache.longest_gap == 3
    other = store(cache, seq(100, 2 * BLOCK))
    for _ in range(3):
        cache.tick()
    assert store(cache, seq(200, 2 * BLOCK)) is None  # both idle 3 calls: maybe still in use
    cache.tick()
    newcomer = store(cache, seq(300, 2 * BLOCK))  # idle 4 > 3: the oldest goes
    assert newcomer is not None and set(cache.entries) == {other, newcomer} and slow not in cache.entries


def test_stats_count_reused_tokens() -> None:
    cache = PrefixCache(budget_bytes=10**9)
    a = seq(0, 3 * BLOCK)
    store(cache, a)
    cache.lookup(a + [1, 2, 3])
    cache.lookup([5] * 10)
    stats = cache.stats.as_dict()
    assert stats["lookups"] == 2 and stats["hits"] == 1
    assert stats["prompt_tokens"] == len(a) + 3 + 10
    assert stats["reused_tokens"] == len(a)
    assert stats["reused_share"] == len(a) / (len(a) + 13)
    cache.clear()
    assert cache.lookup(a + [1]) == (None, 0) and cache.used == 0


def test_a_copied_source_is_taken_only_where_its_row_replaces_it() -> None:
    cache = PrefixCache(budget_bytes=10**9)
    first = seq(0, 4 * BLOCK)
    src = store(cache, first)
    cache.take(src, BLOCK)  # a row sharing only its head: the entry stays for its own agent
    assert src in cache.entries
    cache.take(src, 4 * BLOCK - 4)  # the same agent one step later: the row holds it now
    assert not cache.entries and cache.used == 0
    cache.take(src, 4 * BLOCK)  # already gone: nothing to do
    assert store(cache, first[:-4] + seq(500, 30), src, 4 * BLOCK - 4) is not None  # inserting still works


def test_release_drops_every_entry_of_the_finished_groups() -> None:
    cache = PrefixCache(budget_bytes=10**9)
    for start, group in ((0, "a"), (100, "a"), (200, "b"), (300, None)):
        cache.insert(seq(start, 2 * BLOCK), *kv(seq(start, 2 * BLOCK)), group=group)
    assert cache.release(["a", "zzz"]) == 2 and cache.stats.released == 2
    assert [e.group for e in cache.entries.values()] == ["b", None]
    assert cache.used == 2 * 2 * BLOCK * BYTES_PER_TOKEN
    assert cache.lookup(seq(0, 2 * BLOCK + 3)) == (None, 0)  # gone from the index too
    assert cache.lookup(seq(200, 2 * BLOCK + 3))[1] == 2 * BLOCK


def test_the_same_debates_prompt_replaces_its_agents_other_chain() -> None:
    """A reply prompt shares only the background and history with the agent's survey prompt
    (then the others spoke, and the task differs): within one debate it still takes its place;
    from another debate, or without a group, the 0.75 rule holds."""
    survey = seq(0, 6 * BLOCK)
    reply = survey[: 3 * BLOCK] + seq(500, 3 * BLOCK)  # half shared
    for group, other, kept in (("d1", "d1", 1), ("d1", "d2", 2), (None, None, 2)):
        cache = PrefixCache(budget_bytes=10**9)
        src = cache.insert(survey, *kv(survey), group=group)
        entry, shared = cache.lookup(reply)
        assert (entry, shared) == (src, 3 * BLOCK)
        cache.insert(reply, *kv(reply), source=entry, shared=shared, group=other)
        assert len(cache.entries) == kept
    cache = PrefixCache(budget_bytes=10**9)
    src = cache.insert(survey, *kv(survey), group="d1")
    cache.take(src, BLOCK, "d1")  # under a quarter shared: not the same agent's chain
    assert src in cache.entries
    cache.take(src, 3 * BLOCK, "d1")
    assert not cache.entries
