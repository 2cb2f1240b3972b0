"""The parameters of the ``opinion-sim:`` backend and their parsing, apart from the backend so that
validating a model string (:func:`debatelab.llm.registry.split_model`) imports nothing else."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import DebatelabError


@dataclass(frozen=True)
class SimParams:
    pull: float = 0.2
    influence: float = 0.1
    noise: float = 0.3
    default: float = 6.0
    seed: int = 0


def parse_params(text: str) -> SimParams:
    """``pull=0.2,influence=0.1`` -> :class:`SimParams`; one line naming any bad key or value."""
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or key not in SimParams.__dataclass_fields__:
            raise DebatelabError(f"opinion-sim: unknown parameter {item!r} (use pull, influence, noise, default, seed)")
        if key in values:
            raise DebatelabError(f"opinion-sim: parameter {key!r} given twice")
        try:
            values[key] = int(raw) if key == "seed" else float(raw)
        except ValueError:
            raise DebatelabError(f"opinion-sim: {key} must be a number, not {raw!r}") from None
        if key != "seed" and not math.isfinite(values[key]):
            raise DebatelabError(f"opinion-sim: {key} must be finite, not {raw!r}")
    params = SimParams(**values)
    if params.noise < 0 or not 0 <= params.default <= 10:
        raise DebatelabError("opinion-sim: noise must be >= 0 and default within 0..10")
    return params
