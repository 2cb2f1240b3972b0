"""``opinion-sim:``, a known-answer backend: agents follow a rule whose parameters the user sets,
so every instrument (attractor fit, consistency, preflight, yardsticks) can be checked against truth.

Model string ``opinion-sim:pull=A,influence=B,noise=S,default=D,seed=K`` (all optional; defaults
0.2, 0.1, 0.3, 6, 0; ``opinion-sim`` alone takes them all). Standard library only, so it works
without the analysis extra.

The rule. Each agent has a latent attitude x on the topic's 0-10 scale. Before the debate
Republicans draw x ~ N(2, 0.5²), Democrats N(8, 0.5²) and Default agents N(D, 0.5²), clipped to
0..10. One deviation from the issue's wording: on a built-in topic whose parties' positions put
Republicans on the more severe side (illegal immigration) the partisan means swap (R ~ N(8),
D ~ N(2)), so the simulated parties point the way humans do; an unknown topic never swaps. After
every full round-robin cycle each agent updates x ← x + A·(D − x) + B·(m − x) + N(0, S²), m the
mean of the other agents' attitudes before the update. Updates are not clipped; only what is
stated or answered is.

Replay. The backend is a pure function of each request (runs resume after kill -9 and run on Ray
workers), so it replays the debate from the prompt of a reply or survey: the speaker's name, the
topic and the others' names from the intro line, its party from its background (system message:
the first of the words Republican/Democrat in it, any case; neither: the Default agent), and the
history's turns (a re-anchoring restatement after them, ``prompts.ANCHOR_INTRO``, is none). n = 1 + the
others named; the completed cycles c = turns // n (cycle k is turns
(k-1)·n+1 .. k·n, in speaking order). Seeds (:func:`debatelab.debate.derive_seed`):

- x0 = clip(random.Random(derive_seed(K, name, background, topic, names)).gauss(mean, 0.5)), with
  topic as the prompt writes it (lower case) and names the participants sorted, joined by ",";
- the shock of cycle k is random.Random(derive_seed(K, name, background, k, h_k)).gauss(0, S),
  h_k the history text of cycles 1..k (``prompts.format_history`` of those turns).

The others' attitudes before the cycle-k update are read from what they stated in cycle k (each
speaks once per cycle and states its current attitude). A statement rounds the attitude to 0.1, so
m carries an error of at most 0.05 while the others' attitudes lie within 0..10 (a statement is
clipped, so an attitude outside the range enters m as 0 or 10). A turn that states no number (an
agent on another model) is left out of m; with none at all, m = x (no influence that cycle).

Societies (:mod:`debatelab.society`). A society's prompts carry a memory block. There the start
attitude is seeded by the agent alone, derive_seed(K, name, background, topic, "") (never by who
it meets, so every encounter and panel survey of an agent starts from the same draw), unless the
memory says more: a remembered transcript (a block "NAME: ...") is replayed from the agent's own
first statement in it, through every cycle it completes, with the shocks of the original cycles;
a note to self gives the attitude it states. A panel survey (the agent alone: "You are NAME,
thinking about TOPIC.") reads the attitude its memory gives; a note to self (prefix "Note to
self:") states, like a reply, the attitude after the encounter it summarises. Pairwise
encounters of one round with pull 0 are therefore pairwise averaging with weight B, up to the
statements' rounding to 0.1.

Answers, by the prompt's ``assistant_prefix``:

- a reply ("NAME:") states the attitude, "I rate it 6.3 out of 10." (clipped, one decimal), then
  filler words seeded by the request's seed, within ``max_tokens`` words;
- a 0-10 survey: greedy str(round(clip(x))) (Python's round: halves to even); the distribution
  P(k) = P(round(clip(Y, 0, 10)) = k), Y ~ N(x, 0.5²). Its mode is round(x) except within 0.015
  of 0.5 and 9.5, where the open tail bin (k = 0 or 10) outweighs its neighbour;
- a Pew 4-point survey: Y binned at 2.5, 5 and 7.5 (not a problem at all / small / moderately big /
  very big, letters D C B A); greedy the letter of the bin that holds x;
- a stance judge reads V in "I rate it V out of 10" inside the statement: greedy str(round(clip(V))),
  the same 0-10 distribution around V; no number: "unclear" and uniform log-probs;
- the persona meta-prompt gets "You are NAME, a Republican." (or Democrat) and seeded filler
  sentences, about 120 words within ``max_tokens``; anything else gets seeded filler. A survey
  prompt the backend cannot read answers "unclear" (and uniform log-probs), as a judge does.

Option scoring returns the 0-10 or Pew distribution when the options are that scale's (Pew's
aligned by letter, in any order), uniform log-probs over any other options or without an attitude.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Sequence

from ..debate import derive_seed
from ..prompts import ANCHOR_INTRO, JUDGE_PREFIX, PEW4_PREFIX, SUMMARY_PREFIX, SURVEY_PREFIX
from ..scales import PEW4, ZERO_TEN
from ..topics import BUILTIN_TOPICS
from .base import LLM, Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from .opinion_params import SimParams, parse_params
from .options import BackendOptions

SD = 0.5
"""The spread of the starting draws and of every answer's distribution around the attitude."""
MEANS = {"republican": 2.0, "democrat": 8.0}
PEW4_EDGES = (2.5, 5.0, 7.5)
REPLY_FILLER_WORDS = 40
PERSONA_WORDS = 120
FILLER = ("we", "should", "talk", "about", "this", "with", "care", "and", "listen", "to", "each", "other",
          "because", "people", "in", "my", "town", "see", "it", "every", "day", "the", "facts", "matter",
          "more", "than", "slogans", "so", "let", "us", "look", "at", "what", "works")
_STATED = re.compile(r"I rate it (-?[0-9]+(?:\.[0-9]+)?) out of 10")
# Greedy topic: the names follow the intro's last " with " (a topic name may hold one).
_INTRO = re.compile(r"You are (?P<name>.+?), taking part in a debate about (?P<topic>.+) with (?P<others>.+?)\.\n")
_SOLO = re.compile(r"You are (?P<name>.+?), thinking about (?P<topic>.+)\.\n")
_MEMORY = re.compile(r"\nFrom your earlier conversations on this topic, you remember:\n<memory>\n(?P<memory>.*?)\n</memory>\n",
                     re.DOTALL)
_NO_MEMORY = "\nYou remember no earlier conversation on this topic.\n"
_SPEAKER = re.compile(r"(?P<who>[^:\n]{1,200}): ")
_SO_FAR = "The debate so far:\n\n"
_STATEMENT = re.compile(r'Statement: "(.*)"\n\n', re.DOTALL)
_PERSONA = re.compile(r"for (?P<name>.+?), an American who is a (?P<party>Republican|Democrat)\b")
_PARTY = re.compile(r"\b(republican|democrat)", re.IGNORECASE)


@dataclass(frozen=True)
class Scene:
    """What a reply or survey prompt tells about the debate so far."""

    name: str
    background: str
    topic: str
    names: tuple[str, ...]
    """Every participant, the speaker first."""
    turns: tuple[tuple[str, str], ...]
    """(speaker, text) of every reply so far, in order."""
    memory: str | None = None
    """A society agent's memory block ("" = it remembers nothing yet); None in a debate."""


def read_scene(prompt: Prompt) -> Scene | None:
    """The scene of a reply or survey prompt (``prompts.reply_prompt`` / ``survey_prompt``), or None."""
    if len(prompt.messages) != 2 or prompt.messages[0].role != "system":
        return None
    background, user = prompt.messages[0].content, prompt.messages[1].content
    intro = _INTRO.match(user)
    solo = _SOLO.match(user) if intro is None else None
    if intro is None and solo is None:
        return None
    names = (intro["name"], *intro["others"].split(" and ")) if intro else (solo["name"],)
    found = _MEMORY.search(user)
    memory = found["memory"] if found else ("" if _NO_MEMORY in user else None)
    topic = (intro or solo)["topic"]
    return Scene(names[0], background, topic, names, _history(user, names) if intro else (), memory)


def _history(user: str, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The turns of the prompt's history; a block not opening with a participant's "Name: "
    continues the turn before it (a reply holding a blank line)."""
    if _SO_FAR not in user:
        return ()
    body = user.split(_SO_FAR, 1)[1].rsplit("\n\n", 1)[0]  # the last block is the task
    anchor = body.rfind(f"\n\n{ANCHOR_INTRO} ")
    body = body[:anchor] if anchor >= 0 else body  # a re-anchoring restatement is no turn
    turns: list[tuple[str, str]] = []
    for block in body.split("\n\n"):
        who = next((n for n in names if block.startswith(f"{n}: ") or block == f"{n}:"), None)
        if who is not None:
            turns.append((who, block[len(who) + 2:]))
        elif turns:
            turns[-1] = (turns[-1][0], f"{turns[-1][1]}\n\n{block}")
    return tuple(turns)


def history_text(turns: Sequence[tuple[str, str]]) -> str:
    """The turns as ``prompts.format_history`` writes them (what seeds a cycle's shock)."""
    return "\n\n".join(f"{who}: {text}" for who, text in turns)


def party_of(background: str) -> str:
    """``republican`` / ``democrat`` by the first of those words in the background; else ``default``."""
    found = _PARTY.search(background)
    return found.group(1).lower() if found else "default"


@cache
def swapped(topic_name: str) -> bool:
    """Whether the built-in topic of this name puts Republicans on the more severe side."""
    order = list(PEW4.labels)
    for topic in BUILTIN_TOPICS.values():
        if topic.name.lower() == topic_name.lower():
            rep, dem = (topic.positions.get(p) for p in ("republican", "democrat"))
            return rep in order and dem in order and order.index(rep) > order.index(dem)
    return False


def start_mean(params: SimParams, party: str, topic_name: str) -> float:
    if party == "default":
        return params.default
    mean = MEANS[party]
    return 10.0 - mean if swapped(topic_name) else mean


def stated_value(text: str) -> float | None:
    """V of the first "I rate it V out of 10" in ``text``."""
    found = _STATED.search(text)
    return float(found.group(1)) if found else None


def latent(params: SimParams, scene: Scene) -> float:
    """The speaker's attitude after the cycles its prompt's history completes (module docstring)."""
    x = _start(params, scene)
    return _evolve(params, scene.name, scene.background, x, scene.turns, len(scene.names))


def _start(params: SimParams, scene: Scene) -> float:
    """The attitude before the prompt's history: a seeded draw in a debate (seeded with the
    participants too); in a society, what the memory says, else a draw seeded by the agent alone."""
    mean = start_mean(params, party_of(scene.background), scene.topic)
    who = ",".join(sorted(scene.names)) if scene.memory is None else ""
    draw = clip(random.Random(derive_seed(params.seed, scene.name, scene.background, scene.topic, who)).gauss(mean, SD))
    if not scene.memory:
        return draw
    remembered = _remembered_turns(scene.memory, scene.name)
    if remembered:  # the last encounter's transcript: its start is the agent's first statement
        own = next(stated_value(text) for who_, text in remembered if who_ == scene.name)
        if own is None:
            return draw
        speakers = len({who_ for who_, _ in remembered})
        return _evolve(params, scene.name, scene.background, own, remembered, speakers)
    stated = stated_value(scene.memory)  # a note to self
    return draw if stated is None else stated


def _remembered_turns(memory: str, name: str) -> tuple[tuple[str, str], ...]:
    """The turns of a remembered transcript that the agent spoke in; () for anything else. Its
    own turns are found by its name (which may hold ": "), the others' by the text before ": "."""
    turns = []
    for block in memory.split("\n\n"):
        found = _SPEAKER.match(block)
        if block.startswith(f"{name}: "):
            turns.append((name, block[len(name) + 2:]))
        elif found:
            turns.append((found["who"], block[found.end():]))
        elif turns:
            turns[-1] = (turns[-1][0], f"{turns[-1][1]}\n\n{block}")
    return tuple(turns) if any(who == name for who, _ in turns) else ()


def _evolve(params: SimParams, name: str, background: str, x: float, turns: Sequence[tuple[str, str]],
            n: int) -> float:
    """``x`` updated after every complete cycle of ``turns`` (n speakers per cycle)."""
    for k in range(1, len(turns) // n + 1):
        stated = [v for who, text in turns[(k - 1) * n: k * n] if who != name
                  for v in [stated_value(text)] if v is not None]
        m = sum(stated) / len(stated) if stated else x
        seed = derive_seed(params.seed, name, background, k, history_text(turns[: k * n]))
        shock = random.Random(seed).gauss(0.0, params.noise)
        x = x + params.pull * (params.default - x) + params.influence * (m - x) + shock
    return x


def clip(x: float) -> float:
    return min(10.0, max(0.0, x))


def _mass(lo: float, hi: float, x: float) -> float:
    """P(lo <= Y < hi), Y ~ N(x, SD²), from the nearer tail so far bins keep their precision."""
    a, b = (lo - x) / (SD * math.sqrt(2.0)), (hi - x) / (SD * math.sqrt(2.0))
    if a > 0:
        return 0.5 * (math.erfc(a) - math.erfc(b))
    return 0.5 * (math.erfc(-b) - math.erfc(-a))


def zero_ten_probs(x: float) -> list[float]:
    """P(round(clip(Y, 0, 10)) = k) for Y ~ N(x, SD²), k = 0..10 (k = 0 and 10 take the tails)."""
    edges = [-math.inf, *(k + 0.5 for k in range(10)), math.inf]
    return [_mass(lo, hi, x) for lo, hi in zip(edges, edges[1:])]


def pew4_probs(x: float) -> list[float]:
    """Y ~ N(x, SD²) binned at 2.5, 5 and 7.5 into Pew's four answers, by score (least severe first)."""
    edges = [-math.inf, *PEW4_EDGES, math.inf]
    return [_mass(lo, hi, x) for lo, hi in zip(edges, edges[1:])]


def pew4_score(x: float) -> int:
    """The Pew score (0..3) of the bin that holds x."""
    return sum(x >= edge for edge in PEW4_EDGES)


def filler(seed: int, words: int) -> str:
    """``words`` seeded filler words in sentences of up to ten, each ending with a full stop."""
    chosen = random.Random(seed).choices(FILLER, k=max(0, words))
    sentences = [chosen[i:i + 10] for i in range(0, len(chosen), 10)]
    return " ".join(" ".join([s[0].capitalize(), *s[1:]]) + "." for s in sentences)


def _logs(probs: Sequence[float]) -> list[float]:
    return [math.log(p) if p > 0 else -math.inf for p in probs]


class OpinionSimLLM(LLM):
    """The known-answer backend (module docstring); every answer a pure function of its request."""

    def __init__(self, params: SimParams):
        self.params = params
        self.usage = Usage()

    def identity(self) -> dict[str, Any]:
        return {"backend": "opinion-sim", **asdict(self.params), "version": 1}

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        out = []
        for request in requests:
            text = self.answer(request)
            for stop in request.stop:  # as ScriptedLLM: a stop string ends the text
                if stop and stop in text:
                    text = text[: text.index(stop)]
            words = text.split()
            reason = "length" if len(words) > request.max_tokens else "stop"
            text = " ".join(words[: request.max_tokens]) if reason == "length" else text
            out.append(Completion(text, len(request.prompt.flat_text().split()), len(text.split()), reason))
        self.usage.calls += 1
        self.usage.completion_tokens += sum(c.completion_tokens for c in out)
        self.usage.prompt_tokens += sum(c.prompt_tokens for c in out)
        return out

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        self.usage.calls += 1
        return [OptionScores(tuple(self.scores(r))) for r in requests]

    def attitude(self, prompt: Prompt) -> float | None:
        """The attitude a prompt asks about: the number a judged statement states, or the
        speaker's latent attitude in a reply or survey; None when the prompt holds neither."""
        if prompt.assistant_prefix == JUDGE_PREFIX:
            statement = _STATEMENT.search(prompt.messages[-1].content) if prompt.messages else None
            return stated_value(statement.group(1)) if statement else None
        scene = read_scene(prompt)
        return latent(self.params, scene) if scene is not None else None

    def answer(self, request: GenerateRequest) -> str:
        """The text of one generation, before stop strings and the word limit."""
        prompt, words = request.prompt, request.max_tokens
        seed = derive_seed("filler", request.seed, prompt.flat_text())
        if prompt.assistant_prefix in (SURVEY_PREFIX, JUDGE_PREFIX, PEW4_PREFIX):
            x = self.attitude(prompt)
            if x is None:
                return "unclear"
            if prompt.assistant_prefix == PEW4_PREFIX:
                return PEW4.options[pew4_score(x)]
            return str(round(clip(x)))
        scene = read_scene(prompt)
        if scene is not None and prompt.assistant_prefix in (f"{scene.name}:", SUMMARY_PREFIX):
            statement = f"I rate it {clip(latent(self.params, scene)):.1f} out of 10."
            return f"{statement} {filler(seed, min(REPLY_FILLER_WORDS, words - 7))}".strip()
        persona = _PERSONA.search(prompt.messages[-1].content) if prompt.messages and not prompt.assistant_prefix \
            else None
        if persona is not None:
            opening = f"You are {persona['name']}, a {persona['party']}."
            return f"{opening} {filler(seed, min(PERSONA_WORDS, words) - len(opening.split()))}".strip()
        return filler(seed, min(REPLY_FILLER_WORDS, words))

    def scores(self, request: ScoreRequest) -> list[float]:
        """Log-probabilities aligned with ``request.options`` (module docstring)."""
        options = tuple(request.options)
        uniform = [-math.log(len(options))] * len(options) if options else []
        x = self.attitude(request.prompt)
        if x is None:
            return uniform
        if options == ZERO_TEN.options:
            return _logs(zero_ten_probs(x))
        if len(options) == len(PEW4.options) and set(options) == set(PEW4.options):
            by_letter = dict(zip(PEW4.options, pew4_probs(x)))
            return _logs([by_letter[o] for o in options])
        return uniform


def load_opinion_sim(rest: str, options: BackendOptions) -> OpinionSimLLM:
    return OpinionSimLLM(parse_params(rest))
