"""Replay the Figure 3 run's prompt pattern on the prefix store alone, without a model.

160 debates, 64 in flight, 3 agents, 3 rounds; each agent's background is 300 unique tokens,
each reply adds 100 tokens of history, the survey and reply tasks are 40- and 50-token tails.
Keys/values are meta tensors (sizes only), sized as SmolLM2-135M's in float32. Prints the share
of prompt tokens reused under the store's eviction rule and under the earlier fixed rule (evict
only entries idle for 8 calls).

    python scripts/replay_prefix_store.py [BUDGET_GIB]   # default 7.3, a third of what was free
"""

from __future__ import annotations

import itertools
import sys

import torch

from debatelab.llm.prefix_cache import PrefixCache

KV_BYTES_PER_TOKEN = 46080  # 30 layers x (keys + values) x 3 heads x 64 dims x 4 bytes
DEBATES, IN_FLIGHT, AGENTS, ROUNDS = 160, 64, 3, 3


def kv(n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    half = torch.empty(1, n, KV_BYTES_PER_TOKEN // 8, device="meta")  # float32: 4 bytes each, twice
    return [half], [half]


def replay(budget: int, fixed_gap: int | None) -> dict[str, float]:
    store = PrefixCache(budget)
    ids = itertools.count(10**6)
    fresh = lambda n: [next(ids) for _ in range(n)]  # noqa: E731

    def call(prompts: list[list[int]]) -> None:
        store.tick()
        for p in prompts:
            entry, shared = store.lookup(p)
            if fixed_gap is not None:
                store.longest_gap = fixed_gap - 1  # evictable when idle > gap - 1 calls
            store.insert(p, *kv(len(p)), source=entry, shared=shared)

    survey, task = fresh(40), fresh(50)
    for start in range(0, DEBATES, IN_FLIGHT):
        group = range(start, min(start + IN_FLIGHT, DEBATES))
        background = {(d, a): fresh(300) for d in group for a in range(AGENTS)}
        history: dict[int, list[int]] = {d: [] for d in group}
        for _ in range(ROUNDS):
            call([background[d, a] + history[d] + survey for d in group for a in range(AGENTS)])
            for a in range(AGENTS):
                call([background[d, a] + history[d] + task for d in group])
                for d in group:
                    history[d] = history[d] + fresh(100)
        call([background[d, a] + history[d] + survey for d in group for a in range(AGENTS)])
    return store.stats.as_dict()


if __name__ == "__main__":
    budget = int(float(sys.argv[1] if len(sys.argv) > 1 else 7.3) * 2**30)
    for label, gap in (("learned idle gap", None), ("fixed 8-call idle", 8), ("unlimited memory", None)):
        stats = replay(budget if label != "unlimited memory" else 2**62, gap)
        print(f"{label:18s} reused {100 * stats['reused_share']:.1f} % of prompt tokens, "
              f"{stats['evictions']} evicted, {stats['refused']} not stored")
