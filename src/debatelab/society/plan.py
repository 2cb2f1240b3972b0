"""A society's units as debate specs, deterministic given the config, the model and what the
earlier steps committed (an agent's memory): a resumed run plans the very same ids.

- an **encounter** of step s: the matched agents (each with its memory), ``society.rounds``
  round-robin cycles from a seeded random first speaker, replies only;
- a **summary** (memory ``summary``): one agent's T=0 note on the encounter it just had;
- a **panel** survey: one agent alone with its memory, surveyed as in a debate (step 0 before
  any encounter, then after every step).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Sequence

from ..debate import derive_seed
from ..planning import agent_content
from ..prompts import TEMPLATE_VERSION
from ..topics import Topic
from ..types import Agent, DebateSpec, Turn, UnitKind
from .config import SocietyConfig
from .population import Member

SOCIETY_VERSION = "1"
"""Part of every unit id: bump when what a unit means changes."""


def _spec(config: SocietyConfig, identity: dict[str, Any], kind: UnitKind, topic: Topic, step: int, unit: int,
          agents: tuple[Agent, ...], first: int | None = None, history: tuple[Turn, ...] = ()) -> DebateSpec:
    seed = derive_seed(config.seed, "society", kind, topic.id, step, unit)
    if first is None:
        first = random.Random(seed).randrange(len(agents))
    rounds = config.society.rounds if kind == "encounter" else 0
    content = {
        "society": SOCIETY_VERSION, "kind": kind, "topic": topic.model_dump(), "step": step, "unit": unit,
        "agents": [agent_content(a) for a in agents], "rounds": rounds, "seed": seed, "first": first,
        "model": identity, "reply": config.reply.model_dump(), "survey": config.survey.identity(),
        "templates": TEMPLATE_VERSION, "history": [[t.iteration, t.agent_index, t.text] for t in history],
    }
    debate_id = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return DebateSpec(debate_id=debate_id, topic=topic, repetition=step, agents=agents, rounds=rounds, seed=seed,
                      first_speaker=first, kind=kind, history=history)


def encounter_spec(config: SocietyConfig, identity: dict[str, Any], topic: Topic, step: int, unit: int,
                   members: Sequence[Member], memory: dict[int, str | None]) -> DebateSpec:
    agents = tuple(m.agent(memory.get(m.index, "")) for m in members)
    return _spec(config, identity, "encounter", topic, step, unit, agents)


def summary_spec(config: SocietyConfig, identity: dict[str, Any], encounter: DebateSpec, seat: int,
                 turns: tuple[Turn, ...], agent_index: int) -> DebateSpec:
    """Seat ``seat`` of ``encounter`` writes its note on ``turns`` (population index ``agent_index``)."""
    return _spec(config, identity, "summary", encounter.topic, encounter.repetition, agent_index,
                 encounter.agents, first=seat, history=turns)


def panel_spec(config: SocietyConfig, identity: dict[str, Any], topic: Topic, step: int, member: Member,
               memory: str | None) -> DebateSpec:
    return _spec(config, identity, "panel", topic, step, member.index, (member.agent(memory),), first=0)
