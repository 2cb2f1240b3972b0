"""A society run's own tables (migration 6): its population, its graph, and which step, unit and
agents each of its debates (encounters, summaries, panel surveys) stands for; and the row sets of
its exports. Every write is idempotent (INSERT OR IGNORE): a resumed run writes the same rows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple, Sequence

if TYPE_CHECKING:
    from .writer import RunStore

_CHUNK = 500  # debate ids per IN (...) query, well under SQLite's bound on parameters


class UnitRow(NamedTuple):
    debate_id: str
    kind: str
    topic: str
    step: int
    unit: int
    agents: tuple[int, ...]
    """Population indices of the unit's seats, in seat order."""


def save_population(store: RunStore, agents: Iterable[tuple[int, str, str, str | None, int | None, int]],
                    edges: Iterable[tuple[int, int]]) -> None:
    """(agent, name, party, persona_id, community, degree) rows and (source, target) edges."""
    with store.transaction() as db:
        db.executemany("INSERT OR IGNORE INTO society_agents VALUES (?, ?, ?, ?, ?, ?)", agents)
        db.executemany("INSERT OR IGNORE INTO society_edges VALUES (?, ?)", edges)


def register_units(store: RunStore, units: Sequence[UnitRow]) -> None:
    with store.transaction() as db:
        db.executemany("INSERT OR IGNORE INTO society_units VALUES (?, ?, ?, ?, ?, ?)",
                       [(u.debate_id, u.kind, u.topic, u.step, u.unit, json.dumps(list(u.agents))) for u in units])


def unit_turns(store: RunStore, debate_ids: Sequence[str]) -> dict[str, list[tuple[int, int, str]]]:
    """(iteration, seat, text) of each unit's committed turns, in order."""
    out: dict[str, list[tuple[int, int, str]]] = {d: [] for d in debate_ids}
    for start in range(0, len(debate_ids), _CHUNK):
        chunk = list(debate_ids[start:start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        for debate_id, iteration, seat, text in store.db.execute(
                f"SELECT debate_id, iteration, agent_index, text FROM turns WHERE debate_id IN ({marks})"
                " ORDER BY debate_id, iteration", chunk):
            out[debate_id].append((iteration, seat, text))
    return out


def unfinished(store: RunStore, debate_ids: Sequence[str]) -> list[str]:
    """The units of ``debate_ids`` that are not complete."""
    out = []
    for start in range(0, len(debate_ids), _CHUNK):
        chunk = list(debate_ids[start:start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        out += [row[0] for row in store.db.execute(
            f"SELECT debate_id FROM debates WHERE debate_id IN ({marks}) AND status != 'complete'", chunk)]
    return out


def agent_rows(store: RunStore) -> Iterator[tuple[object, ...]]:
    return store.db.execute("SELECT agent, name, party, persona_id, community, degree FROM society_agents ORDER BY agent")


def edge_rows(store: RunStore) -> Iterator[tuple[object, ...]]:
    return store.db.execute("SELECT source, target FROM society_edges ORDER BY source, target")


def encounter_rows(store: RunStore) -> Iterator[tuple[object, ...]]:
    """topic, step, encounter, debate_id, agents (space-separated population indices)."""
    for topic, step, unit, debate_id, agents in store.db.execute(
            "SELECT topic_id, step, unit, debate_id, agents_json FROM society_units WHERE kind = 'encounter'"
            " ORDER BY topic_id, step, unit"):
        yield topic, step, unit, debate_id, " ".join(map(str, json.loads(agents)))


class PanelRow(NamedTuple):
    """One agent's panel survey at one step; ``probs`` the 0..10 distribution, if any."""

    topic: str
    step: int
    agent: int
    party: str
    method: str
    score: int | None
    valid: int
    expected_score: float | None
    option_mass: float | None
    source: str | None
    raw: str | None
    probs: list[float] | None
    prompt_sha: str | None


def panel_rows(store: RunStore) -> Iterator[PanelRow]:
    """Every agent's panel survey at every step (the Default probes, not members, left out)."""
    for *head, probs, sha in store.db.execute(
            "SELECT u.topic_id, u.step, json_extract(u.agents_json, '$[0]') AS agent, g.party, s.method, s.score,"
            " s.valid, s.expected_score, s.option_mass, s.source, s.raw, s.probs_json, s.prompt_sha"
            " FROM society_units u JOIN surveys s USING (debate_id)"
            " JOIN society_agents g ON g.agent = json_extract(u.agents_json, '$[0]')"
            " WHERE u.kind = 'panel' ORDER BY u.topic_id, u.step, agent"):
        yield PanelRow(*head, json.loads(probs) if probs else None, sha)


def memory_rows(store: RunStore) -> Iterator[tuple[object, ...]]:
    """topic, step, agent, note, prompt_sha: every note an agent wrote itself (memory ``summary``)."""
    return store.db.execute(
        "SELECT u.topic_id, u.step, json_extract(u.agents_json, '$[' || d.first_speaker || ']') AS agent,"
        " t.text, t.prompt_sha FROM society_units u JOIN debates d USING (debate_id)"
        " JOIN turns t USING (debate_id) WHERE u.kind = 'summary' ORDER BY u.topic_id, u.step, agent")


def count_encounters(store: RunStore) -> int:
    return store.db.execute("SELECT COUNT(*) FROM society_units WHERE kind = 'encounter'").fetchone()[0]


def probe_means(store: RunStore, measure: str) -> dict[str, float | None]:
    """Per topic, the mean valid answer of the Default probes (panel units < 0, outside the population)."""
    value = "CASE WHEN s.valid THEN s.score END" if measure == "greedy" else "s.expected_score"
    return dict(store.db.execute(
        f"SELECT u.topic_id, AVG({value}) FROM society_units u JOIN surveys s USING (debate_id)"
        " WHERE u.kind = 'panel' AND u.unit < 0 GROUP BY u.topic_id"))
