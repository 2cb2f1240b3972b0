"""Prompt rendering for debate replies, attitude surveys and persona generation.

Templates are plain text rendered with jinja2 (StrictUndefined, no autoescape: prompts are not
HTML). Bump TEMPLATE_VERSION whenever a template changes: it is part of every debate id, so old
results are never resumed under new wording.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from jinja2 import Environment, StrictUndefined

from .llm.base import Message, Prompt
from .scales import PEW4, Scale, ZERO_TEN
from .topics import Topic
from .types import DEFAULT_CONTEXT, Agent, Turn

TEMPLATE_VERSION = "1"
SURVEY_OPTIONS: tuple[str, ...] = ZERO_TEN.options

_env = Environment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)

# A debate's agents have no memory (None: no block, the paper's prompts unchanged). A society's
# agent always has the block, saying when it remembers nothing yet; alone (a panel survey) it is
# only thinking about the topic.
_DEBATE_INTRO = _env.from_string(
    "You are {{ name }}, {% if others %}taking part in a debate about {{ topic.name | lower }} "
    "with {{ others | join(' and ') }}{% else %}thinking about {{ topic.name | lower }}{% endif %}.\n"
    "{% if memory is not none %}{% if memory %}From your earlier conversations on this topic, you "
    "remember:\n<memory>\n{{ memory }}\n</memory>\n"
    "{% else %}You remember no earlier conversation on this topic.\n{% endif %}{% endif %}"
    "{% if not others %}\n"
    "{% elif history %}The debate so far:\n\n{{ history }}\n\n{% else %}Nobody has spoken yet.\n\n{% endif %}"
)

ANCHOR_INTRO = "Remember the position you opened this debate with:"
"""How a re-anchored reply prompt restates the agent's opening statement (after the history)."""

_REPLY = _env.from_string(
    "{{ intro }}{% if anchor is not none %}" + ANCHOR_INTRO + " "
    "\"{{ anchor }}\"\n\n{% endif %}Write {{ name }}'s next reply in the debate: one short paragraph that "
    "stays true to {{ name }}'s views."
)

_PRIVATE = ("{% if alone %}Answer a private survey question; nobody else will see it.\n"
            "{% else %}Answer a private survey question; the other participants will not see it.\n{% endif %}")

_SURVEY = _env.from_string(
    "{{ intro }}" + _PRIVATE +
    "On a scale from 0 ({{ topic.low_label }}) to 10 ({{ topic.high_label }}): {{ topic.question }} "
    "Reply with the number only."
)

# Pew's own item (Doherty et al., 2023): the question and the four options humans answered, in
# Pew's order, lettered so that option scoring compares four one-token answers of equal length.
_PEW4_SURVEY = _env.from_string(
    "{{ intro }}" + _PRIVATE +
    "How much of a problem do you think {{ topic.name | lower }} is in the country today?\n"
    "{% for letter, label in options %}{{ letter }}. {{ label }}\n{% endfor %}"
    "Reply with the letter only."
)
PEW4_PREFIX = "Answer: "

# A stance judge sees the topic and one utterance, never the speaker's persona or surveys.
_JUDGE = _env.from_string(
    "Here is one statement made in a debate about {{ topic.name | lower }}.\n\n"
    "Statement: \"{{ text }}\"\n\n"
    "Judging only by this statement, how would its speaker answer this question on a scale from "
    "0 ({{ topic.low_label }}) to 10 ({{ topic.high_label }}): {{ topic.question }} "
    "Reply with the number only."
)
JUDGE_PREFIX = "Speaker's rating: "

# Prefilled so that the rating is the natural next token (small chat models otherwise answer in
# words); of the phrasings tried on SmolLM2-135M this one put the most probability on 0..10.
SURVEY_PREFIX = "Rating: "

# A society agent's note to itself after an encounter (its memory when the policy is "summary").
_SUMMARY = _env.from_string(
    "{{ intro }}The debate is over. Write a short private note to yourself, two or three sentences, "
    "on what you now think about {{ topic.name | lower }} and why, so that you remember it later."
)
SUMMARY_PREFIX = "Note to self:"

_PERSONA = _env.from_string(
    "Write a background story, about 120 words, in the second person, for {{ name }}, an "
    "American who is a {{ party | capitalize }}. Begin with \"You are {{ name }}\". "
    "{{ name }} holds these views:\n"
    "{% for t in topics %}- {{ t.name }} is {{ t.positions[party] }} in the country today.\n{% endfor %}"
    "Describe {{ name }}'s life, work and values, and how they shape these views."
)


def format_history(agents: Sequence[Agent], turns: Sequence[Turn]) -> str:
    return "\n\n".join(f"{agents[t.agent_index].name}: {t.text}" for t in turns)


def _intro(agents: Sequence[Agent], me: int, topic: Topic, turns: Sequence[Turn]) -> str:
    others = [a.name for i, a in enumerate(agents) if i != me]
    return _DEBATE_INTRO.render(
        name=agents[me].name, topic=topic, others=others, history=format_history(agents, turns),
        memory=agents[me].memory,
    )


def reply_prompt(agents: Sequence[Agent], me: int, topic: Topic, turns: Sequence[Turn]) -> Prompt:
    """The agent's background as system message; topic, history and the task as user message.
    The answer is prefilled with "Name:" so the model completes the agent's next line. An agent
    that re-anchors (``Agent.reanchor`` = k) has its opening statement restated before the task
    on every k-th of its replies after its first (:func:`anchor_text`)."""
    anchor = anchor_text(agents[me], me, turns)
    user = _REPLY.render(intro=_intro(agents, me, topic, turns), name=agents[me].name, anchor=anchor)
    return Prompt(
        messages=(Message("system", agents[me].background), Message("user", user)),
        assistant_prefix=f"{agents[me].name}:",
    )


def anchor_text(agent: Agent, me: int, turns: Sequence[Turn]) -> str | None:
    """The agent's first reply when this reply is one it re-anchors on, else None."""
    mine = [t for t in turns if t.agent_index == me]
    if not agent.reanchor or not mine or len(mine) % agent.reanchor:
        return None
    return mine[0].text


def without_persona(agents: Sequence[Agent], me: int) -> tuple[Agent, ...]:
    """The seats with agent ``me``'s background replaced by the Default agent's, everything else
    (its name, the others, the history) kept: the contrast of persona-contrastive decoding."""
    plain = agents[me].model_copy(update={"background": DEFAULT_CONTEXT})
    return tuple(plain if i == me else a for i, a in enumerate(agents))


def summary_prompt(agents: Sequence[Agent], me: int, topic: Topic, turns: Sequence[Turn]) -> Prompt:
    """A society agent's note to itself on the encounter ``turns`` it just had (seen with its
    memory from before it), prefilled with :data:`SUMMARY_PREFIX`."""
    user = _SUMMARY.render(intro=_intro(agents, me, topic, turns), topic=topic)
    return Prompt(messages=(Message("system", agents[me].background), Message("user", user)),
                  assistant_prefix=SUMMARY_PREFIX)


def reply_stops(agents: Sequence[Agent]) -> tuple[str, ...]:
    """A reply ends where the model starts writing any speaker's line (another agent's or its own)."""
    return speaker_stops(a.name for a in agents)


def speaker_stops(names: Iterable[str]) -> tuple[str, ...]:
    names = list(names)
    return tuple(f"\n{name}:" for name in names) + tuple(f" {name}:" for name in names)


def clean_reply(text: str, names: Sequence[str]) -> str:
    """The reply as stored: every speaker's "Name:" at its start removed, its own or another's (a
    backend that cannot prefill the agent's name gets it written back, or someone else's, at the
    start, where no stop string can see it), then cut where any speaker's line begins later, as
    :func:`reply_stops` stops it (for servers that applied only some stops, or none)."""
    heads = sorted({f"{name}:" for name in names}, key=len, reverse=True)
    text = text.strip()
    while head := next((h for h in heads if text.startswith(h)), None):
        text = text[len(head):].strip()
    cuts = [text.find(stop) for stop in speaker_stops(names) if stop in text]
    return text[: min(cuts)].strip() if cuts else text


def survey_prompt(agents: Sequence[Agent], me: int, topic: Topic, turns: Sequence[Turn],
                  scale: Scale = ZERO_TEN) -> Prompt:
    """The private survey on the topic's 0-10 scale (the paper's), or on Pew's 4-point item."""
    intro, alone = _intro(agents, me, topic, turns), len(agents) == 1
    if scale is PEW4:
        user = _PEW4_SURVEY.render(intro=intro, topic=topic, options=pew4_letters(), alone=alone)
        prefix = PEW4_PREFIX
    else:
        user, prefix = _SURVEY.render(intro=intro, topic=topic, alone=alone), SURVEY_PREFIX
    return Prompt(messages=(Message("system", agents[me].background), Message("user", user)),
                  assistant_prefix=prefix)


def pew4_letters() -> list[tuple[str, str]]:
    """(letter, label) in the order Pew asks them: "A very big problem" first."""
    return [(letter, label[0].upper() + label[1:]) for letter, label in
            zip(reversed(PEW4.options), reversed(PEW4.labels))]


def judge_prompt(topic: Topic, text: str) -> Prompt:
    """The stance judge's question about one utterance, answered on the topic's 0-10 scale."""
    return Prompt(messages=(Message("user", _JUDGE.render(topic=topic, text=text)),), assistant_prefix=JUDGE_PREFIX)


def persona_prompt(name: str, party: str, topics: Sequence[Topic]) -> Prompt:
    with_views = [t for t in topics if party in t.positions]
    return Prompt(messages=(Message("user", _PERSONA.render(name=name, party=party, topics=with_views)),))
