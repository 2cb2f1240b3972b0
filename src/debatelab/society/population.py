"""Who lives in the society: each agent's party, persona, unique name and (two-community) block.

Agents of a party take the bank's personas of that party in a seeded shuffle, cycling when the
party has more agents than personas; an agent whose persona is taken again gets a letter after
the persona's name ("Mary B"), so every name is unique (prompts and the known-answer backend tell
agents apart by name). Default agents get the built-in first names, lettered the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from ..debate import derive_seed
from ..errors import DebatelabError
from ..personas import first_names
from ..types import DEFAULT_CONTEXT, Agent, Persona
from .config import SocietyConfig
from .network import check_network

PARTIES = ("republican", "democrat")


@dataclass(frozen=True)
class Member:
    """One agent of the society."""

    index: int
    name: str
    party: str
    """republican, democrat or default."""
    background: str
    persona_id: str | None
    community: int | None
    """Its block in a ``two_communities`` network (0 Republicans, 1 Democrats); else None."""

    def agent(self, memory: str | None) -> Agent:
        """The member as a seat in an encounter, summary or panel survey, with its memory."""
        return Agent(name=self.name, role=self.party, background=self.background,  # type: ignore[arg-type]
                     persona_id=self.persona_id, memory=memory)


def letters(k: int) -> str:
    """1 -> "B", 25 -> "Z", 26 -> "AA", ...: the k-th reuse of a name (0 is the name alone)."""
    out, k = "", k + 1
    while k:
        k, rest = divmod(k - 1, 26)
        out = chr(65 + rest) + out
    return out


def personas_per_party(config: SocietyConfig) -> dict[str, int]:
    """Personas a society without a bank generates: the config's ``per_party``, else one per
    agent up to 40 (the paper's bank) for each party the mix seats."""
    counts = config.society.mix.counts(config.society.population)
    per_party = config.persona_generation.per_party
    return {p: per_party or min(counts[p], 40) for p in PARTIES if counts[p]}


def check_population(config: SocietyConfig, bank: Sequence[Persona] | None) -> None:
    """Fail before anything is written when the bank or the network cannot make this society."""
    check_network(config.society.network, config.society.population)
    counts = config.society.mix.counts(config.society.population)
    for party in PARTIES:
        if counts[party] and bank is not None and not any(p.party == party for p in bank):
            raise DebatelabError(f"the society seats {counts[party]} {party} agent(s) but the persona bank has none")
    if bank is None and sum(personas_per_party(config).values()) > len(first_names()):
        raise DebatelabError(f"generating {sum(personas_per_party(config).values())} personas needs more names than "
                             f"the built-in {len(first_names())}; lower persona_generation.per_party or use a bank")


def build_members(config: SocietyConfig, bank: Sequence[Persona]) -> list[Member]:
    """Every agent, in index order: roles laid out by a seeded shuffle, personas drawn per party."""
    check_population(config, bank)
    counts = config.society.mix.counts(config.society.population)
    roles, communities = layout(config)
    pools = {p: random.Random(derive_seed(config.seed, "society", "personas", p)).sample(
        [x for x in bank if x.party == p], sum(x.party == p for x in bank)) for p in PARTIES if counts[p]}
    defaults = list(first_names())
    random.Random(derive_seed(config.seed, "society", "names")).shuffle(defaults)
    used: dict[str, int] = {}
    names: set[str] = set()
    taken = {p: 0 for p in (*PARTIES, "default")}
    members = []
    for index, role in enumerate(roles):
        if role == "default":
            base, background, persona_id = defaults[taken["default"] % len(defaults)], DEFAULT_CONTEXT, None
            taken["default"] += 1
        else:
            persona = pools[role][taken[role] % len(pools[role])]
            taken[role] += 1
            base, background, persona_id = persona.name, persona.background, persona.id
        reuse = used.get(base, 0)
        name = base if reuse == 0 else f"{base} {letters(reuse)}"
        while name in names:  # a bank may hold "Ann" and "Ann B" both
            reuse += 1
            name = f"{base} {letters(reuse)}"
        used[base] = reuse + 1
        names.add(name)
        members.append(Member(index, name, role, background, persona_id, communities[index]))
    return members


def layout(config: SocietyConfig) -> tuple[list[str], list[int | None]]:
    """Each agent's role (a seeded shuffle of the mix) and its block in a ``two_communities``
    network (Republicans 0, Democrats 1, Default agents a seeded draw), None otherwise."""
    counts = config.society.mix.counts(config.society.population)
    roles = [role for role, n in counts.items() for _ in range(n)]
    random.Random(derive_seed(config.seed, "society", "roles")).shuffle(roles)
    if config.society.network.kind != "two_communities":
        return roles, [None] * len(roles)
    block_rng = random.Random(derive_seed(config.seed, "society", "blocks"))
    return roles, [PARTIES.index(r) if r in PARTIES else block_rng.randrange(2) for r in roles]
