"""The typed vocabulary shared by the engine, storage and analysis."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from .topics import Topic
from .validation import StrictModel

Party = Literal["republican", "democrat"]
Role = Literal["republican", "democrat", "default"]
ROLES: tuple[str, ...] = ("republican", "democrat", "default")
DEFAULT_CONTEXT = "You are an American."


class Persona(StrictModel):
    """One generated partisan agent: a name and a background story (read from user banks, so
    as strict as a config)."""

    id: str
    party: Party
    name: str
    background: str
    model: str = ""
    seed: int | None = None
    prompt: str = ""
    template_version: str = ""


class Agent(BaseModel):
    """A seat in one debate: a persona (or the Default agent) under a name."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: Role
    background: str
    persona_id: str | None = None
    model: str = ""
    """Key of the model this agent runs on ("" = the experiment's model; see config.Seat)."""
    memory: str | None = None
    """A society agent's memory of its earlier encounters on the topic ("" = none yet), shown in
    its prompts; None for a debate's agents, whose prompts have no memory block."""
    reanchor: int = 0
    """Every k-th of the agent's replies after its first restates its opening statement in its
    reply prompt (``Seat.reanchor``); 0: never."""


UnitKind = Literal["debate", "encounter", "summary", "panel"]
"""What a spec runs (:func:`debatelab.debate.schedule`): a paper debate (surveys before and after
every cycle); a society's encounter (replies only); a society agent's summary of its encounter
(one T=0 reply by seat ``first_speaker``); a society's panel survey of one agent (one survey)."""


class DebateSpec(BaseModel):
    """Everything that determines one debate; its id is a content hash of this."""

    model_config = ConfigDict(frozen=True)

    debate_id: str
    topic: Topic
    repetition: int
    agents: tuple[Agent, ...]
    rounds: int
    seed: int
    first_speaker: int
    kind: UnitKind = "debate"
    history: tuple["Turn", ...] = ()
    """The encounter a ``summary`` spec summarises (empty for every other kind)."""


class Turn(BaseModel):
    model_config = ConfigDict(frozen=True)

    iteration: int
    agent_index: int
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    prompt_sha: str | None = None
    """:func:`debatelab.llm.base.prompt_sha` of the text the model conditioned on for this reply
    (None in runs made before debatelab stored it); never part of a debate's id."""


class SurveyAnswer(BaseModel):
    """One attitude measurement: the greedy T=0 answer and/or the 0..10 distribution.

    ``score``/``valid``/``raw`` are the parsed greedy answer (the paper's measure; ``score`` is
    None and ``valid`` False when it is not an integer 0..10) for the ``both`` and ``generate``
    methods; for ``logprobs`` alone they are the distribution's argmax and whether one exists.
    ``source`` says how the distribution was obtained: ``logprobs`` (complete model
    log-probabilities), ``top_k`` (model log-probabilities of only the options among the API's
    top-k alternatives, the rest counted as 0: a partial distribution, ``option_mass`` a lower
    bound), or ``generated`` (the backend could only parse a greedy answer into a one-hot); None
    when none was asked for.
    """

    model_config = ConfigDict(frozen=True)

    iteration: int
    agent_index: int
    method: Literal["both", "generate", "logprobs"]
    score: int | None
    valid: bool
    expected_score: float | None = None
    probs: tuple[float, ...] | None = None
    option_mass: float | None = None
    raw: str | None = None
    source: Literal["logprobs", "top_k", "generated"] | None = None
    prompt_sha: str | None = None
    """:func:`debatelab.llm.base.prompt_sha` of the texts sent for this survey: the greedy
    request's conditioning, then the scoring request's (one hash when they are the same text);
    None in runs made before debatelab stored it."""


DebateSpec.model_rebuild()
