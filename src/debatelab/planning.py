"""From a config and a persona bank to the list of debates to run (pure, deterministic)."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from typing import Any, Sequence

from .config import ExperimentConfig
from .debate import derive_seed
from .errors import DebatelabError
from .personas import draw_names
from .prompts import TEMPLATE_VERSION
from .topics import Topic
from .types import DEFAULT_CONTEXT, Agent, DebateSpec, Persona


def personas_needed(config: ExperimentConfig) -> dict[str, int]:
    """Per party: one distinct persona per seat and repetition (the paper's 40 for 40 repetitions)."""
    seats = Counter(r for r in config.agents if r != "default")
    per_party = config.persona_generation.per_party
    return {party: per_party or n * config.repetitions for party, n in seats.items()}


def plan_debates(config: ExperimentConfig, bank: Sequence[Persona], identity: dict[str, Any]) -> list[DebateSpec]:
    """Repetition r seats the r-th personas of a seeded shuffle of each party's bank, on every topic
    (as in the paper, the same agents meet on each topic). With more seats than personas the draw
    wraps around, so combinations then repeat across repetitions."""
    seats = Counter(r for r in config.agents if r != "default")
    shuffled = {}
    for party, n in seats.items():
        pool = [p for p in bank if p.party == party]
        if len(pool) < n:
            raise DebatelabError(f"the roster seats {n} {party} agent(s) but the persona bank has {len(pool)}")
        shuffled[party] = random.Random(derive_seed(config.seed, "draw", party)).sample(pool, len(pool))
    specs = []
    for topic in config.resolved_topics():
        for rep in range(config.repetitions):
            agents = _seat(config.agents, shuffled, seats, rep, derive_seed(config.seed, "names", rep))
            specs.append(_spec(config, topic, rep, agents, identity))
    return specs


def _seat(roster: Sequence[str], shuffled: dict[str, list[Persona]], seats: Counter, rep: int,
          name_seed: int) -> tuple[Agent, ...]:
    taken: Counter = Counter()
    chosen: list[Persona | None] = []
    for role in roster:
        if role == "default":
            chosen.append(None)
            continue
        pool = shuffled[role]
        chosen.append(pool[(rep * seats[role] + taken[role]) % len(pool)])
        taken[role] += 1
    used = [p.name for p in chosen if p is not None]
    defaults = iter(draw_names(roster.count("default"), name_seed, exclude=used))
    return tuple(
        Agent(name=next(defaults), role="default", background=DEFAULT_CONTEXT) if p is None
        else Agent(name=p.name, role=p.party, background=p.background, persona_id=p.id)
        for p in chosen
    )


def _spec(config: ExperimentConfig, topic: Topic, rep: int, agents: tuple[Agent, ...],
          identity: dict[str, Any]) -> DebateSpec:
    seed = derive_seed(config.seed, topic.id, rep)
    first = random.Random(seed).randrange(len(agents))
    content = {
        "topic": topic.model_dump(), "repetition": rep, "agents": [a.model_dump() for a in agents],
        "rounds": config.rounds, "seed": seed, "first": first, "model": identity,
        "reply": config.reply.model_dump(), "survey": config.survey.model_dump(), "templates": TEMPLATE_VERSION,
    }
    debate_id = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return DebateSpec(debate_id=debate_id, topic=topic, repetition=rep, agents=agents,
                      rounds=config.rounds, seed=seed, first_speaker=first)
