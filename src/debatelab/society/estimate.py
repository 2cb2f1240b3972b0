"""What a society run would do, for ``debatelab run --dry-run``: its population, its graph and
every step's encounters (exact: matching is a pure function of the graph and the seed), and the
requests they make. Tokens are not estimated: a society's prompts grow with what agents remember."""

from __future__ import annotations

from .config import SocietyConfig
from .engine import PROBES
from .network import build_graph, encounters, neighbour_lists
from .population import layout, personas_per_party


def society_estimate(config: SocietyConfig) -> str:
    s, topics = config.society, len(config.resolved_topics())
    roles, communities = layout(config)
    graph = build_graph(s.network, roles, communities, config.seed)
    neighbours = neighbour_lists(graph, len(roles))
    per_step = [len(encounters(neighbours, s.encounter_size, config.seed, step)) for step in range(1, s.steps + 1)]
    met = sum(per_step)
    replies = met * s.encounter_size * s.rounds * topics
    notes = met * s.encounter_size * topics if s.memory == "summary" else 0
    surveys = ((len(roles) + PROBES) + len(roles) * s.steps) * topics
    asks = " and ".join(a for a, on in (("a greedy answer", config.survey.records_greedy),
                                         ("option scoring", config.survey.records_distribution)) if on)
    counts = s.mix.counts(s.population)
    stories = 0 if config.personas else sum(personas_per_party(config).values())
    return "\n".join([
        f"society: {len(roles)} agents ({counts['republican']} Republican, {counts['democrat']} Democrat, "
        f"{counts['default']} Default), {graph.number_of_edges()} edges "
        f"(mean degree {2 * graph.number_of_edges() / len(roles):.1f}), {s.steps} step(s), {topics} topic(s)",
        f"encounters of {s.encounter_size}: {met} in all, per step {min(per_step)}..{max(per_step)} "
        f"({s.rounds} round(s) each; agents left without a free neighbour sit a step out)",
        f"requests: {replies} replies, {notes} notes to self, {surveys} surveys ({asks}; "
        f"{PROBES} Default probes per topic at step 0), {stories} persona stories",
        "tokens: not estimated for a society (prompts grow with what its agents remember)",
    ])
