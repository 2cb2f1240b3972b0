"""A deterministic test double: replies and scores are pure functions of the request.

Like simonw/llm's MockModel it keeps a history of every batch it received, so engine tests can
inspect exactly what a model would have seen (e.g. that surveys never enter a reply prompt).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Sequence

from .base import LLM, Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from .options import BackendOptions

ReplyFn = Callable[[GenerateRequest], str]
ScoreFn = Callable[[ScoreRequest], Sequence[float]]


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def _prompt_key(prompt: Prompt) -> str:
    return prompt.flat_text()


def default_reply(request: GenerateRequest) -> str:
    """A fixed-shape reply; a survey or stance-judge question (the prompt prefilled with its
    prefix) is answered with the mode of :func:`default_scores` for that prompt, as a greedy model
    would (a letter on Pew's scale)."""
    from ..prompts import JUDGE_PREFIX, PEW4_PREFIX, SURVEY_OPTIONS, SURVEY_PREFIX
    from ..scales import PEW4

    if request.prompt.assistant_prefix in (SURVEY_PREFIX, JUDGE_PREFIX):
        return str(_digest(_prompt_key(request.prompt)) % len(SURVEY_OPTIONS))
    if request.prompt.assistant_prefix == PEW4_PREFIX:
        return PEW4.options[_digest(_prompt_key(request.prompt)) % len(PEW4.options)]
    word = _digest(_prompt_key(request.prompt), request.seed) % 10_000
    return (f"I have thought about this carefully, and my view is number {word}. I grew up in a small "
            "town, I work hard, I care about my family and my neighbours, and I say what I think.")


def default_scores(request: ScoreRequest) -> list[float]:
    """A peaked distribution whose mode depends on the prompt (deterministic, normalised)."""
    n = len(request.options)
    mode = _digest(_prompt_key(request.prompt)) % n
    weights = [math.exp(-abs(i - mode)) for i in range(n)]
    total = sum(weights)
    return [math.log(w / total) for w in weights]


class ScriptedLLM(LLM):
    """Replies from ``reply_fn`` and scores from ``score_fn`` (both pure), with a call history."""

    def __init__(self, name: str = "", reply_fn: ReplyFn | None = None, score_fn: ScoreFn | None = None,
                 keep_history: bool = True):
        self.name = name or "default"
        self.reply_fn = reply_fn or default_reply
        self.score_fn = score_fn or default_scores
        # Runs from the CLI keep no history: memory must stay flat over thousands of debates.
        self.keep_history = keep_history
        self.generate_calls: list[list[GenerateRequest]] = []
        self.score_calls: list[list[ScoreRequest]] = []
        self.usage: Usage = Usage()

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        if self.keep_history:
            self.generate_calls.append(list(requests))
        out = []
        for req in requests:
            text = self.reply_fn(req)
            for stop in req.stop:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            words = text.split()
            reason = "length" if len(words) > req.max_tokens else "stop"
            text = " ".join(words[: req.max_tokens]) if reason == "length" else text
            out.append(Completion(text, len(_prompt_key(req.prompt).split()), len(text.split()), reason))
        self.usage.calls += 1
        self.usage.completion_tokens += sum(c.completion_tokens for c in out)
        self.usage.prompt_tokens += sum(c.prompt_tokens for c in out)
        return out

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        if self.keep_history:
            self.score_calls.append(list(requests))
        self.usage.calls += 1
        return [OptionScores(tuple(self.score_fn(r))) for r in requests]

    def identity(self) -> dict[str, Any]:
        return {"backend": "scripted", "name": self.name}


def load_scripted(name: str, options: BackendOptions) -> ScriptedLLM:
    return ScriptedLLM(name, keep_history=False)
