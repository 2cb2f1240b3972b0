"""Per-agent models ("seats"): which backend serves each agent whose roster entry names its own
model, adapter or inference-time method. Used by every executor, locally and on each Ray worker."""

from __future__ import annotations

from typing import Mapping

from .config import ExperimentConfig, Seat
from .errors import DebatelabError
from .llm.base import LLM, Intervention, Prompt, Steer
from .llm.options import BackendOptions
from .llm.registry import load_llm
from .methods import STEERING_PERSONAS
from .types import DEFAULT_CONTEXT, Agent


def seat_adapters(config: ExperimentConfig) -> list[str]:
    """Adapters of agents on the experiment's own model (a vllm: engine serves them all), to be
    declared when the experiment's backend loads."""
    return [o.adapter for m, o in config.seat_backends().values() if m == config.model and o.adapter]


def load_seat_llms(config: ExperimentConfig, llm: LLM, given: Mapping[str, LLM] | None = None) -> dict[str, LLM]:
    """One backend per distinct per-agent model (``given`` ones as they are). A seat on the
    experiment's model with another adapter is a view on the loaded ``llm`` when the backend can
    switch adapters (``with_adapter``); otherwise it loads a backend of its own. A seat with a
    method is a view (``with_intervention``) on the backend it would have without it."""
    seats: dict[str, LLM] = {}
    methods = config.seat_methods()
    for key, (model, options) in config.seat_backends().items():
        if given and key in given:
            seats[key] = given[key]
            continue
        base = _base_backend(config, llm, model, options)
        seats[key] = base if key not in methods else _with_methods(config, base, methods[key])
    return seats


def _base_backend(config: ExperimentConfig, llm: LLM, model: str, options: BackendOptions) -> LLM:
    if model == config.model and options.adapter == config.backend.adapter:
        return llm  # only a method sets this seat apart
    view = llm.with_adapter(options.adapter) if model == config.model and options.adapter else None
    return view if view is not None else load_llm(model, options)


def _with_methods(config: ExperimentConfig, llm: LLM, seat: Seat) -> LLM:
    steer = None
    if seat.steering is not None:
        persona, default = steering_prompts(config, seat.role)
        steer = Steer(seat.steering.layer, seat.steering.scale, persona, default)
    contrast = seat.contrastive.strength if seat.contrastive is not None else None
    view = llm.with_intervention(Intervention(contrast=contrast, steer=steer))
    if view is None:
        raise DebatelabError(f"{seat.role} seat: contrastive decoding and steering need a transformers backend "
                             f"(embedded or hf:), not {seat.model or config.model!r}")
    return view


def steering_prompts(config: ExperimentConfig, party: str) -> tuple[tuple[Prompt, ...], tuple[Prompt, ...]]:
    """The prompts a steering direction contrasts: every topic's solo survey prompt for the
    party's first ``STEERING_PERSONAS`` personas of the bank, and the same prompts with the
    Default background (the persona's name kept, so that only the background differs)."""
    from .personas import load_bank
    from .prompts import survey_prompt

    assert config.personas is not None  # the config refuses steering without a bank
    people = [p for p in load_bank(config.personas) if p.party == party][:STEERING_PERSONAS]
    if not people:
        raise DebatelabError(f"steering a {party} seat needs {party} personas in the bank {config.personas}")
    scale = config.survey.scale_spec
    persona, default = [], []
    for topic in config.resolved_topics():
        for p in people:
            me = Agent(name=p.name, role=p.party, background=p.background)
            persona.append(survey_prompt([me], 0, topic, [], scale))
            default.append(survey_prompt([me.model_copy(update={"background": DEFAULT_CONTEXT})], 0, topic, [], scale))
    return tuple(persona), tuple(default)
