"""Attitude measurement: parse a generated rating, or read a distribution over 0..10.

Parsing rules for ``generate`` surveys (an answer is never guessed):
1. Only the first line of the answer counts.
2. Numbers are collected: standalone integers or decimals ("7", "10.", "-1", "7.5"; not "7th" or
   "#1"), and the words zero..ten only where they are the whole answer ("Seven.") or are
   followed by "out of ten" or "/10" ("seven out of ten"), so "no one knows" is no rating.
   A "/10" or "out of 10" after a number is the scale, not a second number.
3. Valid only if exactly one distinct number remains and it is an integer from 0 to 10.
So "7/10", "Seven", "I'd say 8 out of 10" and "10." parse; "", "6 or 7", "11", "-1", "7.5",
"A big one." and "7th" are recorded as invalid.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from .llm.base import Completion, OptionScores
from .types import SurveyAnswer

_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_WORD = "(" + "|".join(_WORDS) + ")"
_SCALE = r"(?:\s*/\s*10|\s+out\s+of\s+(?:10|ten))(?!\w)"
_OUT_OF = re.compile(_SCALE, re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\w#.])-?\d+(?:\.\d+)?(?![\w])")
_WORD_ALONE = re.compile(r"\W*" + _WORD + r"\W*", re.IGNORECASE)
_WORD_OF_TEN = re.compile(r"\b" + _WORD + _SCALE, re.IGNORECASE)


def parse_rating(text: str) -> int | None:
    """The 0-10 rating stated in ``text``, or None if there is not exactly one."""
    line = text.strip().split("\n", 1)[0]
    found = {float(m) for m in _DIGITS.findall(_OUT_OF.sub(" ", line))}
    alone = _WORD_ALONE.fullmatch(line)
    words = [alone.group(1)] if alone else _WORD_OF_TEN.findall(line)
    found |= {float(_WORDS[w.lower()]) for w in words}
    if len(found) != 1:
        return None
    value = found.pop()
    if value != int(value) or not 0 <= value <= 10:
        return None
    return int(value)


def from_generation(iteration: int, agent: int, completion: Completion) -> SurveyAnswer:
    score = parse_rating(completion.text)
    return SurveyAnswer(
        iteration=iteration, agent_index=agent, method="generate",
        score=score, valid=score is not None, raw=completion.text,
    )


def from_option_scores(iteration: int, agent: int, scores: OptionScores) -> SurveyAnswer:
    """Renormalise the option log-probs over 0..10; argmax is the score, the mean its expectation.

    ``option_mass`` is the total probability the model put on answering exactly one option:
    a low mass means the model mostly wanted to say something else, which analyses may filter on.
    """
    probs = normalise(scores.logprobs)
    if probs is None:
        return SurveyAnswer(iteration=iteration, agent_index=agent, method="logprobs",
                            score=None, valid=False, raw=scores.text)
    return SurveyAnswer(
        iteration=iteration, agent_index=agent, method="logprobs",
        score=max(range(len(probs)), key=probs.__getitem__), valid=True,
        expected_score=sum(i * p for i, p in enumerate(probs)), probs=tuple(probs),
        option_mass=sum(math.exp(lp) for lp in scores.logprobs) if scores.source == "logprobs" else None,
        raw=scores.text,
    )


def normalise(logprobs: Sequence[float]) -> list[float] | None:
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    if not finite:
        return None
    top = max(finite)
    weights = [math.exp(lp - top) if math.isfinite(lp) else 0.0 for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]
