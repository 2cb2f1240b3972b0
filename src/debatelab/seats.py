"""Per-agent models ("seats"): which backend serves each agent whose roster entry names its own
model or adapter. Used by every executor, locally and on each Ray worker."""

from __future__ import annotations

from typing import Mapping

from .config import ExperimentConfig
from .llm.base import LLM
from .llm.registry import load_llm


def seat_adapters(config: ExperimentConfig) -> list[str]:
    """Adapters of agents on the experiment's own model (a vllm: engine serves them all), to be
    declared when the experiment's backend loads."""
    return [o.adapter for m, o in config.seat_backends().values() if m == config.model and o.adapter]


def load_seat_llms(config: ExperimentConfig, llm: LLM, given: Mapping[str, LLM] | None = None) -> dict[str, LLM]:
    """One backend per distinct per-agent model (``given`` ones as they are). A seat on the
    experiment's model with another adapter is a view on the loaded ``llm`` when the backend can
    switch adapters (``with_adapter``); otherwise it loads a backend of its own."""
    seats: dict[str, LLM] = {}
    for key, (model, options) in config.seat_backends().items():
        if given and key in given:
            seats[key] = given[key]
            continue
        view = llm.with_adapter(options.adapter) if model == config.model and options.adapter else None
        seats[key] = view if view is not None else load_llm(model, options)
    return seats
