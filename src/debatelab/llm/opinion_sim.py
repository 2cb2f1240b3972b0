"""``opinion-sim:``, a known-answer backend: agents follow a rule whose parameters the user sets,
so every instrument can be checked against the truth.

Model string ``opinion-sim:pull=A,influence=B,noise=S,default=D,seed=K`` (all optional; defaults
0.2, 0.1, 0.3, 6, 0). Each agent has a latent attitude x on the 0-10 scale. Before the debate
Republicans draw x ~ N(2, 0.5²), Democrats N(8, 0.5²) and Default agents N(D, 0.5²), clipped
to 0..10; on a built-in topic whose parties' positions put Republicans on the more severe side
(illegal immigration) the partisan means swap, so the simulated parties point the way humans do.
After every full round-robin cycle each agent updates x ← x + A·(D − x) + B·(m − x) + N(0, S²),
m the mean of the other agents' attitudes before the update (updates are not clipped; what is
stated or answered is).

The backend is a pure function of each request (runs resume after kill -9 and run on Ray
workers), so it replays the debate from the prompt: the speaker's own draws are seeded by its
name, background, the topic and the participants (and the cycle's history, for its noise); the
others' attitudes are read from what they stated in the cycle, and a statement rounds the
attitude to 0.1, so m carries an error of at most 0.05.

- A reply states the current attitude, "I rate it 6.3 out of 10.", then filler words.
- A 0-10 survey: greedy round(x); the distribution P(k) = P(round(clip(Y, 0, 10)) = k), Y ~ N(x, 0.5²).
- A Pew 4-point survey: Y binned at 2.5, 5 and 7.5 into not a problem / small / moderately big / very big.
- A stance judge reads the number the utterance states, with the same 0-10 distribution around it.
- A persona meta-prompt gets "You are NAME, a Republican ..." (or Democrat) and filler.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..debate import derive_seed
from .base import LLM, Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from .opinion_params import SimParams, parse_params
from .options import BackendOptions

SD = 0.5
MEANS = {"republican": 2.0, "democrat": 8.0}
PEW4_EDGES = (2.5, 5.0, 7.5)
FILLER = ("we", "should", "talk", "about", "this", "with", "care", "and", "listen", "to", "each", "other",
          "because", "people", "in", "my", "town", "see", "it", "every", "day")
_STATED = re.compile(r"I rate it (-?[0-9]+(?:\.[0-9]+)?) out of 10")
_INTRO = re.compile(r"^You are (.+?), taking part in a debate about (.+?) with (.+?)\.\n", re.DOTALL)
_PERSONA = re.compile(r"for (.+?), an American who is a (Republican|Democrat)\b")


@dataclass(frozen=True)
class Scene:
    """What a survey or reply prompt tells about the debate so far."""

    name: str
    background: str
    topic: str
    names: tuple[str, ...]
    history: tuple[tuple[str, str], ...]


def read_scene(prompt: Prompt) -> Scene | None:
    if len(prompt.messages) != 2:
        return None
    background, user = prompt.messages[0].content, prompt.messages[1].content
    intro = _INTRO.match(user)
    if intro is None:
        return None
    name, topic, others = intro.groups()
    names = (name, *others.split(" and "))
    history = []
    if "The debate so far:\n\n" in user:
        body = user.split("The debate so far:\n\n", 1)[1]
        for block in body.split("\n\n"):
            speaker, sep, text = block.partition(": ")
            if sep and speaker in names:
                history.append((speaker, text))
    return Scene(name, background, topic, names, tuple(history))


def party_of(background: str) -> str:
    found = [(background.find(w), p) for w, p in (("Republican", "republican"), ("Democrat", "democrat"))
             if w in background]
    return min(found)[1] if found else "default"


def _swapped(topic_name: str) -> bool:
    from ..topics import BUILTIN_TOPICS

    order = ["not a problem at all", "a small problem", "a moderately big problem", "a very big problem"]
    for topic in BUILTIN_TOPICS.values():
        if topic.name.lower() == topic_name.lower():
            rep, dem = (topic.positions.get(p) for p in ("republican", "democrat"))
            return rep in order and dem in order and order.index(rep) > order.index(dem)
    return False


def latent(params: SimParams, scene: Scene) -> float:
    """The speaker's attitude after the cycles its prompt's history completes."""
    party = party_of(scene.background)
    mean = params.default if party == "default" else MEANS[party]
    if party != "default" and _swapped(scene.topic):
        mean = 10.0 - mean
    own = (params.seed, scene.name, scene.background, scene.topic.lower(), sorted(scene.names))
    x = min(10.0, max(0.0, random.Random(derive_seed(*own, "start")).gauss(mean, SD)))
    n = len(scene.names)
    for cycle in range(1, len(scene.history) // n + 1):
        turns = scene.history[(cycle - 1) * n: cycle * n]
        stated = [float(m.group(1)) for who, text in turns if who != scene.name
                  for m in [_STATED.search(text)] if m]
        m = sum(stated) / len(stated) if stated else x
        shock = random.Random(derive_seed(*own, cycle, scene.history[: cycle * n])).gauss(0.0, 1.0)
        x = x + params.pull * (params.default - x) + params.influence * (m - x) + params.noise * shock
    return x


def _clip(x: float) -> float:
    return min(10.0, max(0.0, x))


def _cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def zero_ten_probs(x: float) -> list[float]:
    """P(round(clip(Y, 0, 10)) = k) for Y ~ N(x, SD²), k = 0..10."""
    edges = [-math.inf, *(k + 0.5 for k in range(10)), math.inf]
    return [_cdf((hi - x) / SD) - _cdf((lo - x) / SD) for lo, hi in zip(edges, edges[1:])]


def pew4_probs(x: float) -> list[float]:
    """Y ~ N(x, SD²) binned into Pew's four answers, least severe first."""
    edges = [-math.inf, *PEW4_EDGES, math.inf]
    return [_cdf((hi - x) / SD) - _cdf((lo - x) / SD) for lo, hi in zip(edges, edges[1:])]


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
            text = self._text(request)
            for stop in request.stop:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            words = text.split()
            reason = "length" if len(words) > request.max_tokens else "stop"
            text = " ".join(words[: request.max_tokens]) if reason == "length" else text
            out.append(Completion(text, len(request.prompt.flat_text().split()), len(text.split()), reason))
        self.usage.calls += 1
        self.usage.completion_tokens += sum(c.completion_tokens for c in out)
        return out

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        self.usage.calls += 1
        return [OptionScores(tuple(self._scores(r))) for r in requests]

    def _attitude(self, prompt: Prompt) -> float | None:
        """The speaker's attitude (surveys, replies) or the stated one (the judge); None if neither."""
        from ..prompts import JUDGE_PREFIX

        if prompt.assistant_prefix == JUDGE_PREFIX:
            found = _STATED.search(prompt.messages[-1].content)
            return float(found.group(1)) if found else None
        scene = read_scene(prompt)
        return latent(self.params, scene) if scene is not None else None

    def _text(self, request: GenerateRequest) -> str:
        from ..prompts import JUDGE_PREFIX, PEW4_PREFIX, SURVEY_PREFIX
        from ..scales import PEW4

        prompt = request.prompt
        x = self._attitude(prompt)
        if prompt.assistant_prefix == PEW4_PREFIX and x is not None:
            return PEW4.options[max(range(4), key=pew4_probs(x).__getitem__)]
        if prompt.assistant_prefix in (SURVEY_PREFIX, JUDGE_PREFIX):
            return "unclear" if x is None else str(round(_clip(x)))
        filler = " ".join(random.Random(request.seed).choices(FILLER, k=40))
        persona = _PERSONA.search(prompt.messages[-1].content) if prompt.messages else None
        if persona is not None:
            return f"You are {persona.group(1)}, a {persona.group(2)}. {filler}"
        if x is not None:
            return f"I rate it {_clip(x):.1f} out of 10. {filler}"
        return filler

    def _scores(self, request: ScoreRequest) -> list[float]:
        from ..scales import PEW4, ZERO_TEN

        x = self._attitude(request.prompt)
        uniform = [-math.log(len(request.options))] * len(request.options)
        if x is None:
            return uniform
        if tuple(request.options) == ZERO_TEN.options:
            return _logs(zero_ten_probs(x))
        if sorted(request.options) == sorted(PEW4.options):
            probs = dict(zip(PEW4.options, pew4_probs(x)))
            return _logs([probs[o] for o in request.options])
        return uniform


def load_opinion_sim(rest: str, options: BackendOptions) -> OpinionSimLLM:
    return OpinionSimLLM(parse_params(rest))
