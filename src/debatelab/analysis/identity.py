"""Prompt identity of two runs: did their models condition on the same text, reply by reply and
survey by survey? Each turn and survey stores the hash of what its model read (``prompt_sha``);
two runs of one config on two backends of one model should agree wherever the debate has not
yet diverged (at least every survey before the first reply).

Rows are matched by their place in the plan: topic, repetition, iteration and agent. The topic
and repetition stand in for the debate id, because a debate's id includes the model's identity,
so two backends never share one; for two runs with the same ids the match is the same.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..store.views import read_views

_KEY = ["topic", "repetition", "iteration", "agent_index"]


def prompt_identity(run_a: str | Path, run_b: str | Path) -> dict[str, dict[str, int]]:
    """For ``turns`` and ``surveys``: rows present in both runs (``matched``), of them with equal
    hashes (``identical``), with different ones (``differing``) and with a hash missing on either
    side (``unhashed``: a run from before hashes were stored), and rows in one run only
    (``missing``). Both runs are read read-only."""
    a, b = read_views(Path(run_a)), read_views(Path(run_b))
    return {"turns": _compare(a.turns, b.turns), "surveys": _compare(a.surveys, b.surveys)}


def _compare(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, int]:
    columns = [*_KEY, "prompt_sha"]
    both = a[columns].merge(b[columns], on=_KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    matched = both[both["_merge"] == "both"]
    hashed = matched["prompt_sha_a"].notna() & matched["prompt_sha_b"].notna()
    same = hashed & (matched["prompt_sha_a"] == matched["prompt_sha_b"])
    return {"matched": len(matched), "identical": int(same.sum()), "differing": int((hashed & ~same).sum()),
            "unhashed": int((~hashed).sum()), "missing": int((both["_merge"] != "both").sum())}
