"""Run a society: step 0 surveys everyone; each step matches agents into encounters along the
graph's edges, runs every encounter of the step together in the wave engine, lets each agent
update its memory, then surveys every agent again (hidden, as in debates).

Every unit (encounter, summary, panel survey) is a debate of the run database, committed wave by
wave through the executor (local or Ray): a killed run, run again, replays the steps from what
is committed (units already complete are skipped, the memories read back) and goes on mid-step.
A unit whose request failed for good stops the run at the end of its phase: the next phase
needs every result of this one (memories), so the run ends ``incomplete`` and a rerun retries.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..executor import Executor
from ..prompts import format_history
from ..store import RunStore
from ..store.society import UnitRow, register_units, save_population, unfinished, unit_turns
from ..types import DEFAULT_CONTEXT, DebateSpec, Persona, Turn
from .config import SocietyConfig
from .network import build_graph, check_meetings, encounters, graph_sha, neighbour_lists
from .plan import encounter_spec, panel_spec, summary_spec
from .population import Member, build_members, layout

PROBES = 5
"""Default agents surveyed alone per topic at step 0, outside the population: the model's own
attitude D, from which every step's distance to the default is measured."""


@dataclass
class SocietyProgress:
    """What the run did, for its summary."""

    failed: int = 0
    steps_done: int = 0
    stopped: str = ""
    """Why the run stopped before its last step ("" when it did not)."""


class _Stopped(Exception):
    """A phase ended with units that failed for good (their debates say why)."""


class SocietyRun:
    """One society run on ``executor`` into ``store`` (see the module docstring)."""

    def __init__(self, config: SocietyConfig, executor: Executor, store: RunStore, bank: Sequence[Persona],
                 on_phase: Callable[[int, str, int], None] | None = None):
        self.config, self.executor, self.store = config, executor, store
        self.members = build_members(config, bank)
        self.graph, self.neighbours = society_graph(config)
        self.identity = executor.llm.identity()
        self.topics = config.resolved_topics()
        self.memory: dict[tuple[str, int], str] = {}
        self.progress = SocietyProgress()
        self.on_phase = on_phase
        self.first_specs: list[DebateSpec] = []

    def save_population(self) -> None:
        degree = dict(self.graph.degree())
        save_population(self.store, [(m.index, m.name, m.party, m.persona_id, m.community, degree[m.index])
                                     for m in self.members],
                        [(min(a, b), max(a, b)) for a, b in self.graph.edges()])

    def run(self) -> SocietyProgress:
        self.save_population()
        try:
            self._panel(0, probes=True)
            for step in range(1, self.config.society.steps + 1):
                self._step(step)
                self.progress.steps_done = step
        except _Stopped as stop:
            self.progress.stopped = str(stop)
        return self.progress

    def _step(self, step: int) -> None:
        groups = encounters(self.neighbours, self.config.society.encounter_size, self.config.seed, step)
        specs, rows = [], []
        for topic in self.topics:
            memory = {i: self.memory.get((topic.id, i), "") for g in groups for i in g}
            for unit, group in enumerate(groups):
                spec = encounter_spec(self.config, self.identity, topic, step, unit,
                                      [self.members[i] for i in group], memory)
                specs.append(spec)
                rows.append(UnitRow(spec.debate_id, "encounter", topic.id, step, unit, group))
        self._phase(specs, rows, step, "encounter")
        turns = unit_turns(self.store, [s.debate_id for s in specs])
        policy = self.config.society.memory
        if policy == "turns":
            for spec, row in zip(specs, rows):
                transcript = format_history(spec.agents, _turns(turns[spec.debate_id]))
                for agent in row.agents:
                    self.memory[(row.topic, agent)] = transcript
        elif policy == "summary":
            self._summaries(specs, rows, turns, step)
        self._panel(step)

    def _summaries(self, specs: list[DebateSpec], rows: list[UnitRow], turns: dict[str, list[tuple[int, int, str]]],
                   step: int) -> None:
        notes, note_rows = [], []
        for spec, row in zip(specs, rows):
            history = _turns(turns[spec.debate_id])
            for seat, agent in enumerate(row.agents):
                note = summary_spec(self.config, self.identity, spec, seat, history, agent)
                notes.append(note)
                note_rows.append(UnitRow(note.debate_id, "summary", row.topic, step, agent, row.agents))
        self._phase(notes, note_rows, step, "summary")
        written = unit_turns(self.store, [n.debate_id for n in notes])
        for note, row in zip(notes, note_rows):
            self.memory[(row.topic, row.unit)] = written[note.debate_id][0][2]

    def _panel(self, step: int, probes: bool = False) -> None:
        specs, rows = [], []
        for topic in self.topics:
            for member in self.members + (_probes() if probes else []):
                spec = panel_spec(self.config, self.identity, topic, step, member,
                                  self.memory.get((topic.id, member.index), ""))
                specs.append(spec)
                rows.append(UnitRow(spec.debate_id, "panel", topic.id, step, member.index, (member.index,)))
        self._phase(specs, rows, step, "panel")

    def _phase(self, specs: list[DebateSpec], rows: list[UnitRow], step: int, kind: str) -> None:
        """Register, run and check one phase: every unit in flight together (``phase_in_flight``)."""
        if not self.first_specs or (kind == "encounter" and self.first_specs[0].kind != "encounter"):
            self.first_specs = specs[:1]
        self.store.register(specs)
        register_units(self.store, rows)
        for wave in self.executor.run(specs, self.store):
            self.progress.failed += len(wave.failed)
        left = unfinished(self.store, [s.debate_id for s in specs])
        if self.on_phase is not None:
            self.on_phase(step, kind, len(specs))
        if left:
            raise _Stopped(f"{len(left)} {kind} unit(s) of step {step} failed; run again to retry")


_BUILT: dict[str, tuple[Any, list[list[int]]]] = {}
"""The last graph built, by what it was built from: the run fingerprint and the steps share it."""


def society_graph(config: SocietyConfig) -> tuple[Any, list[list[int]]]:
    """The society's graph and every agent's sorted neighbours (refused when nobody could meet)."""
    key = _graph_key(config)
    if key not in _BUILT:
        roles, communities = layout(config)
        graph = build_graph(config.society.network, roles, communities, config.seed)
        neighbours = neighbour_lists(graph, len(roles))
        check_meetings(neighbours, config.society.encounter_size)
        _BUILT.clear()
        _BUILT[key] = graph, neighbours
    return _BUILT[key]


def _graph_key(config: SocietyConfig) -> str:
    """Everything the graph depends on: the society section, the seed, an edge list's bytes."""
    network, content = config.society.network, b""
    if network.kind == "edge_list" and network.file is not None:
        with suppress(OSError):  # unreadable: building it says so, in one line
            content = network.file.read_bytes()
    head = json.dumps([config.society.model_dump(mode="json"), config.seed]).encode()
    return hashlib.sha256(head + b"\x00" + content).hexdigest()


def fingerprint_extra(config: SocietyConfig) -> str:
    """What the run fingerprint adds for a society: its graph, as built here and now."""
    return f"graph={graph_sha(society_graph(config)[0])}"


def _turns(rows: list[tuple[int, int, str]]) -> tuple[Turn, ...]:
    return tuple(Turn(iteration=i, agent_index=seat, text=text) for i, seat, text in rows)


def _probes() -> list[Member]:
    """The Default agents that measure the model's own attitude (negative indices: not members)."""
    names = ("Alex", "Jordan", "Taylor", "Morgan", "Casey")
    return [Member(-(k + 1), names[k], "default", DEFAULT_CONTEXT, None, None) for k in range(PROBES)]


def society_meta(config: SocietyConfig) -> dict[str, Any]:
    """What the exports' society.json says about the run (less what is measured)."""
    s = config.society
    return {"population": s.population, "steps": s.steps, "encounter_size": s.encounter_size, "rounds": s.rounds,
            "memory": s.memory, "mix": s.mix.model_dump(), "network": s.network.model_dump(mode="json"),
            "measure": config.survey.resolved_measure,
            "topics": {t.id: t.name for t in config.resolved_topics()}}
