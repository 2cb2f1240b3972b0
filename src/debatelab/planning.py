"""From a config to its personas and the list of debates to run (deterministic; only
:func:`generate_bank` calls a model)."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from typing import Any, Callable, Sequence

from .config import ExperimentConfig
from .debate import derive_seed
from .errors import DebatelabError
from .llm.base import LLM
from .personas import draw_names, first_names, generate_personas, persona_topics
from .prompts import TEMPLATE_VERSION
from .society.config import SocietyConfig
from .society.population import check_population, personas_per_party
from .topics import Topic
from .types import DEFAULT_CONTEXT, Agent, DebateSpec, Persona


def personas_needed(config: ExperimentConfig) -> dict[str, int]:
    """Per party: one distinct persona per seat and repetition, so every agent sits in exactly one
    debate per topic: the paper's 40 for 40 three-way repetitions, and the same 40 for an echo
    chamber's 20 debates of two ("pairing each of the forty Republican agents with another")."""
    if isinstance(config, SocietyConfig):  # a population, not a roster: its own count
        return personas_per_party(config)
    seats = Counter(r for r in config.roles if r != "default")
    per_party = config.persona_generation.per_party
    return {party: per_party or n * config.repetitions for party, n in seats.items()}


def generate_bank(config: ExperimentConfig, llm: LLM, on_batch: Callable[[list[Persona]], None] | None = None,
                  existing: Sequence[Persona] = ()) -> list[Persona]:
    """The personas a run of ``config`` generates (``existing``: those an interrupted run kept;
    ``on_batch`` receives each accepted batch, for committing it at once)."""
    gen = config.persona_generation
    return generate_personas(
        llm, config.model, personas_needed(config), config.seed, topics=persona_topics(config.resolved_topics()),
        temperature=gen.temperature, max_tokens=gen.max_tokens, min_words=gen.min_words,
        max_attempts=gen.max_attempts, on_batch=on_batch, existing=existing,
    )


def check_feasible(config: ExperimentConfig, bank: Sequence[Persona] | None) -> None:
    """Fail before anything is written if the bank (or the bank to be generated) cannot seat the
    roster with a different persona combination in every repetition (a society: its population)."""
    if isinstance(config, SocietyConfig):
        return check_population(config, bank)
    seats = Counter(r for r in config.roles if r != "default")
    if bank is None:
        available = personas_needed(config)
        names = sum(available.values()) + config.roles.count("default")
        if names > len(first_names()):
            raise DebatelabError(f"the run needs {names} distinct agent names but the built-in list has "
                                 f"{len(first_names())}; use fewer repetitions or a persona bank")
    else:
        available = Counter(p.party for p in bank)
    combos = 1
    for party, n in seats.items():
        if available.get(party, 0) < n:
            raise DebatelabError(f"the roster seats {n} {party} agent(s) but the persona bank has "
                                 f"{available.get(party, 0)}")
        combos *= math.comb(available[party], n)
    if combos < config.repetitions:
        raise DebatelabError(f"the persona bank allows only {combos} distinct persona combination(s) "
                             f"for {config.repetitions} repetitions; add personas or lower repetitions")


def plan_debates(config: ExperimentConfig, bank: Sequence[Persona], identity: dict[str, Any],
                 seat_identities: dict[str, dict[str, Any]] | None = None) -> list[DebateSpec]:
    """Repetition r seats the r-th personas of a seeded shuffle of each party's bank, on every topic
    (as in the paper, the same agents meet on each topic). Once a party's bank is used up, further
    repetitions draw seeded random combinations not used before, so every repetition differs.

    ``seat_identities`` maps each per-seat model key to that backend's identity; it enters the
    debate ids like ``identity`` does, so two per-agent model choices never share results."""
    check_feasible(config, bank)
    seats = Counter(r for r in config.roles if r != "default")
    shuffled = {party: random.Random(derive_seed(config.seed, "draw", party)).sample(
        [p for p in bank if p.party == party], sum(p.party == party for p in bank)) for party in seats}
    used: set[frozenset[str]] = set()
    combos = [_combination(shuffled, seats, rep, config.seed, used) for rep in range(config.repetitions)]
    specs = []
    for topic in config.resolved_topics():
        for rep, combo in enumerate(combos):
            agents = _seat(config.roles, config.seat_models(), combo, derive_seed(config.seed, "names", rep))
            agents = tuple(a.model_copy(update={"reanchor": k}) if k else a for a, k in zip(agents, config.seat_reanchors()))
            specs.append(_spec(config, topic, rep, agents, identity, seat_identities or {}))
    return specs


def _combination(shuffled: dict[str, list[Persona]], seats: Counter, rep: int, seed: int,
                 used: set[frozenset[str]]) -> dict[str, list[Persona]]:
    if all((rep + 1) * n <= len(shuffled[party]) for party, n in seats.items()):
        combo = {party: shuffled[party][rep * n:(rep + 1) * n] for party, n in seats.items()}
    else:
        rng = random.Random(derive_seed(seed, "combination", rep))
        while True:  # terminates: check_feasible guaranteed an unused combination exists
            combo = {party: rng.sample(shuffled[party], n) for party, n in seats.items()}
            if _key(combo) not in used:
                break
    used.add(_key(combo))
    return combo


def _key(combo: dict[str, list[Persona]]) -> frozenset[str]:
    return frozenset(p.id for people in combo.values() for p in people)


def _seat(roster: Sequence[str], models: Sequence[str], combo: dict[str, list[Persona]],
          name_seed: int) -> tuple[Agent, ...]:
    remaining = {party: iter(people) for party, people in combo.items()}
    chosen = [None if role == "default" else next(remaining[role]) for role in roster]
    used = [p.name for p in chosen if p is not None]
    defaults = iter(draw_names(roster.count("default"), name_seed, exclude=used))
    return tuple(
        Agent(name=next(defaults), role="default", background=DEFAULT_CONTEXT, model=model) if p is None
        else Agent(name=p.name, role=p.party, background=p.background, persona_id=p.id, model=model)
        for p, model in zip(chosen, models)
    )


def _spec(config: ExperimentConfig, topic: Topic, rep: int, agents: tuple[Agent, ...],
          identity: dict[str, Any], seat_identities: dict[str, dict[str, Any]]) -> DebateSpec:
    seed = derive_seed(config.seed, topic.id, rep)
    first = random.Random(seed).randrange(len(agents))
    content = {
        # An agent on the experiment's own model hashes as before per-agent models existed, so
        # earlier run directories keep their debate ids and still resume.
        "topic": topic.model_dump(), "repetition": rep,
        "agents": [agent_content(a) for a in agents],
        "rounds": config.rounds, "seed": seed, "first": first, "model": identity,
        # The survey measure only chooses what analyses read (greedy or expected), never what is
        # asked or stored, so like the run fingerprint the ids leave it out.
        "reply": config.reply.model_dump(), "survey": config.survey.identity(),
        "templates": TEMPLATE_VERSION,
    }
    if seat_identities:
        content["seat_models"] = {key: seat_identities[key] for key in sorted({a.model for a in agents if a.model})}
    debate_id = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return DebateSpec(debate_id=debate_id, topic=topic, repetition=rep, agents=agents,
                      rounds=config.rounds, seed=seed, first_speaker=first)


def agent_content(agent: Agent) -> dict[str, Any]:
    """An agent as its debate's id hashes it. Fields added later (its own model, a society's
    memory, re-anchoring) are left out at their defaults, so earlier run directories keep their ids."""
    exclude = {name for name, unset in (("model", ""), ("memory", None), ("reanchor", 0)) if getattr(agent, name) == unset}
    return agent.model_dump(exclude=exclude)
