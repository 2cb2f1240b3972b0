"""The parameters of the ``opinion-sim:`` backend and their parsing, apart from the backend so that
validating a model string (:func:`debatelab.llm.registry.split_model`, i.e. when a config loads)
imports nothing else and a bad string fails before anything runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import DebatelabError

_KEYS = "pull, influence, noise, default, seed"


@dataclass(frozen=True)
class SimParams:
    pull: float = 0.2
    """A: the pull of every agent toward the model's default attitude D, per cycle."""
    influence: float = 0.1
    """B: the pull toward the mean of the other agents' attitudes, per cycle."""
    noise: float = 0.3
    """S: the standard deviation of each agent's per-cycle shock (>= 0)."""
    default: float = 6.0
    """D: the model's own attitude, 0..10 (the Default agent's starting mean)."""
    seed: int = 0
    """Seeds every draw; two seeds give two independent replications of the same run."""


def _value(key: str, raw: str) -> float | int:
    if key == "seed":
        try:
            return int(raw)
        except ValueError:
            raise DebatelabError(f"opinion-sim: seed must be an integer, not {raw!r}") from None
    try:
        value = float(raw)
    except ValueError:
        raise DebatelabError(f"opinion-sim: {key} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise DebatelabError(f"opinion-sim: {key} must be a finite number, not {raw!r}")
    if key == "noise" and value < 0:
        raise DebatelabError(f"opinion-sim: noise must be >= 0, not {raw!r}")
    if key == "default" and not 0 <= value <= 10:
        raise DebatelabError(f"opinion-sim: default must be within 0..10, not {raw!r}")
    return value


def parse_params(text: str) -> SimParams:
    """``pull=0.2,influence=0.1`` -> :class:`SimParams` (``""``: all defaults); one line naming any
    bad key or value."""
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = (s.strip() for s in item.partition("="))
        if key not in SimParams.__dataclass_fields__:
            raise DebatelabError(f"opinion-sim: unknown parameter {key!r} (use {_KEYS})")
        if not sep or not raw:
            raise DebatelabError(f"opinion-sim: parameter {key!r} needs a value ({key}=NUMBER)")
        if key in values:
            raise DebatelabError(f"opinion-sim: parameter {key!r} given twice")
        values[key] = _value(key, raw)
    return SimParams(**values)
