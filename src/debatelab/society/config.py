"""A society run's configuration: an experiment config whose ``society:`` section replaces the
debate roster (``agents``, ``rounds``, ``repetitions``) with a population on a network.

Everything else (model, backend, topics, personas, reply, survey, seed, executor) means what it
means in a debate run, and is validated with the same bounds and one-line errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config_schema import MAX_REPLIES, MAX_ROUNDS, ExperimentConfig, Seat, check_path
from ..validation import StrictModel

MAX_POPULATION = 100_000
MAX_STEPS = 1_000
MAX_COMPLETE = 2_000
"""A complete graph of n agents has n(n-1)/2 edges: beyond this, use a sparse network."""
MAX_DEGREE = 1_000
MAX_EDGES = 2_000_000
"""Most edges of a society's graph (population x degree / 2, or an edge list's lines): about the
complete graph's bound; a graph this size already takes a few GB in networkx."""
NetworkKind = Literal["complete", "erdos_renyi", "watts_strogatz", "barabasi_albert", "two_communities",
                      "edge_list"]
MemoryPolicy = Literal["none", "turns", "summary"]


class NetworkConfig(StrictModel):
    """Who can meet whom: a networkx generator seeded from the run's seed, or an edge-list file."""

    kind: NetworkKind = "watts_strogatz"
    """``complete``; ``erdos_renyi`` (G(n, p), p = degree/(n-1)); ``watts_strogatz`` (ring of
    ``degree`` neighbours, rounded down to even, rewired with ``rewiring``); ``barabasi_albert``
    (each new agent attaches to round(degree/2) others, at least 1); ``two_communities`` (a
    stochastic block model: Republicans in one block, Democrats in the other, Default agents
    spread over both by seeded draw; ``homophily`` of the expected ties fall inside a block);
    ``edge_list`` (``file``)."""
    degree: float = Field(6.0, gt=0, le=MAX_DEGREE, strict=True)
    """Mean degree of the generated graph (every kind but ``complete`` and ``edge_list``), up to 1,000."""
    rewiring: float = Field(0.1, ge=0, le=1, strict=True)
    """Watts-Strogatz rewiring probability, 0..1."""
    homophily: float = Field(0.9, ge=0, le=1, strict=True)
    """``two_communities``: the expected share of all ties that fall inside a block, 0..1 (with
    equal blocks also each agent's share; 0.5 there: as likely to meet either party)."""
    file: Path | None = None
    """``edge_list``: a text file of agent index pairs ``i j``, one per line (``#`` comments),
    indices 0..population-1; relative to the config file."""

    @field_validator("file", mode="before")
    @classmethod
    def _path(cls, value: object) -> object:
        return check_path(value)

    @model_validator(mode="after")
    def _file_iff_edge_list(self) -> "NetworkConfig":
        if (self.kind == "edge_list") != (self.file is not None):
            raise ValueError("network.file is needed by kind 'edge_list' and only by it")
        return self


class PartyMix(StrictModel):
    """Shares of the population by role; they must add up to 1."""

    republican: float = Field(0.5, ge=0, le=1, strict=True)
    democrat: float = Field(0.5, ge=0, le=1, strict=True)
    default: float = Field(0.0, ge=0, le=1, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _unset_is_zero(cls, data: object) -> object:
        """A share the mix leaves out is 0 (``mix: {default: 1}``): the 0.5/0.5 defaults are for no mix."""
        if isinstance(data, dict) and data:
            return {"republican": 0.0, "democrat": 0.0, "default": 0.0, **data}
        return data

    @model_validator(mode="after")
    def _sums_to_one(self) -> "PartyMix":
        total = self.republican + self.democrat + self.default
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"the shares of republican, democrat and default must add up to 1, not {total:g}")
        return self

    def counts(self, population: int) -> dict[str, int]:
        """Agents per role (largest remainder; ties to the roster order republican, democrat, default)."""
        shares = {"republican": self.republican, "democrat": self.democrat, "default": self.default}
        counts = {role: math.floor(share * population) for role, share in shares.items()}
        left = population - sum(counts.values())
        for role in sorted(shares, key=lambda r: -(shares[r] * population - counts[r]))[:left]:
            counts[role] += 1
        return counts


class SocietySection(StrictModel):
    """The population, its network and its dynamics."""

    population: int = Field(ge=2, le=MAX_POPULATION, strict=True)
    """Agents, 2..100,000."""
    mix: PartyMix = PartyMix()
    """Shares of Republicans, Democrats and Default agents (default: half and half, no Default)."""
    network: NetworkConfig = NetworkConfig()
    """Who can meet whom."""
    steps: int = Field(3, ge=1, le=MAX_STEPS, strict=True)
    """Steps, 1..1,000; each matches agents into encounters along edges, runs them, then surveys everyone."""
    encounter_size: Literal[2, 3] = 2
    """Agents per encounter: a pair (along an edge) or a triad (an agent and two of its neighbours)."""
    rounds: int = Field(1, ge=1, le=MAX_ROUNDS, strict=True)
    """Round-robin cycles per encounter, 1..100."""
    memory: MemoryPolicy = "turns"
    """What an agent carries from one encounter to its next ones: ``none``; ``turns``, the
    transcript of its last encounter; ``summary``, a note it writes itself after each encounter
    (T=0, seeded, stored; at most ``reply.max_tokens`` tokens)."""


class SocietyConfig(ExperimentConfig):
    """An experiment config with a ``society:`` section (see the module docstring)."""

    society: SocietySection
    """The population, network and dynamics; its presence makes the run a society."""
    agents: list[str | Seat] = Field(default_factory=lambda: ["republican", "democrat"], exclude=True)
    """Not a society's (its roles come from ``society.mix``): the parent's roster, left at a placeholder."""

    @model_validator(mode="after")
    def _no_roster(self) -> "SocietyConfig":
        given = sorted({"agents", "rounds", "repetitions"} & self.model_fields_set)
        if given:
            raise ValueError(f"a society config takes no {', '.join(given)}: the population is "
                             "society.population and society.mix, encounters last society.rounds")
        if any(isinstance(a, Seat) for a in self.agents):
            raise ValueError("a society runs every agent on the experiment's model")
        return self

    @model_validator(mode="after")
    def _bounded_society(self) -> "SocietyConfig":
        s = self.society
        if s.network.kind == "complete" and s.population > MAX_COMPLETE:
            raise ValueError(f"a complete graph of {s.population:,} agents is too large (at most "
                             f"{MAX_COMPLETE:,}); use a sparse network kind")
        if s.network.kind not in ("complete", "edge_list") and s.population * s.network.degree / 2 > MAX_EDGES:
            raise ValueError(f"population x degree / 2 = {s.population * s.network.degree / 2:,.0f} edges; at most "
                             f"{MAX_EDGES:,} (use a lower degree)")
        if s.population < s.encounter_size:
            raise ValueError(f"a population of {s.population} cannot form encounters of {s.encounter_size}")
        if self.survey.scale != "0-10":
            raise ValueError("a society is surveyed on the paper's 0-10 scale (its measures and classical "
                             "models assume it); survey.scale pew4 is for debates")
        replies = s.population * s.steps * s.rounds * len(self.topics)
        if replies > MAX_REPLIES:
            raise ValueError(f"the society plans up to {replies:,} replies (population x steps x rounds x "
                             f"topics); at most {MAX_REPLIES:,} in one run")
        return self

    def phase_in_flight(self) -> int:
        """Units advanced together: every unit of a phase (all encounters of a step in flight
        together), unless ``max_in_flight`` is set to cap memory."""
        return self.max_in_flight if "max_in_flight" in self.model_fields_set else self.society.population


def resolve_paths(section: object, base: Path) -> object:
    """``society.network.file`` relative to the config file (anything else left for validation)."""
    if not isinstance(section, dict) or not isinstance(section.get("network"), dict):
        return section
    network = dict(section["network"])
    if isinstance(network.get("file"), str) and network["file"].strip():
        network["file"] = str(base / Path(network["file"]).expanduser())
    return {**section, "network": network}
