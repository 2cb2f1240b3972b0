"""The pure debate protocol (paper §4.3): whose turn it is and when to survey. No I/O here.

Iterations count replies: iteration k (1-based) is the k-th reply. Agents speak round-robin from
a random first speaker. Every agent is surveyed at iteration 0 (before the debate) and after each
full cycle, i.e. at iterations n, 2n, ..., rounds*n for n agents.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Union


@dataclass(frozen=True)
class Reply:
    iteration: int
    agent: int


@dataclass(frozen=True)
class Survey:
    iteration: int
    agents: tuple[int, ...]


Step = Union[Reply, Survey]


def speaker(iteration: int, first: int, n_agents: int) -> int:
    return (first + iteration - 1) % n_agents


def schedule(n_agents: int, rounds: int, first: int, kind: str = "debate") -> list[Step]:
    """The steps of a debate, or of a society's unit (:data:`debatelab.types.UnitKind`): an
    encounter has the replies alone (the society surveys everyone after each step), a summary
    the one note of seat ``first``, a panel the one survey of its agent."""
    everyone = tuple(range(n_agents))
    if kind == "summary":
        return [Reply(1, first)]
    if kind == "panel":
        return [Survey(0, everyone)]
    surveyed = kind == "debate"
    steps: list[Step] = [Survey(0, everyone)] if surveyed else []
    for iteration in range(1, rounds * n_agents + 1):
        steps.append(Reply(iteration, speaker(iteration, first, n_agents)))
        if surveyed and iteration % n_agents == 0:
            steps.append(Survey(iteration, everyone))
    return steps


def next_step(steps: list[Step], replies_done: Iterable[int], surveys_done: Iterable[tuple[int, int]]) -> Step | None:
    """The first step not yet done; a partly done survey returns only its missing agents."""
    replies, surveys = set(replies_done), set(surveys_done)
    for step in steps:
        if isinstance(step, Reply):
            if step.iteration not in replies:
                return step
            continue
        missing = tuple(a for a in step.agents if (step.iteration, a) not in surveys)
        if missing:
            return Survey(step.iteration, missing)
    return None


def survey_count(n_agents: int, rounds: int) -> int:
    return n_agents * (rounds + 1)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
