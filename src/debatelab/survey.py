"""Attitude measurement: parse a generated rating, or read a distribution over 0..10.

Parsing rules for ``generate`` surveys (an answer is never guessed; ``parse_rating`` returns the
rating or None, and None is recorded as an invalid answer):

1. Only the first line of the answer counts, after surrounding whitespace is stripped.
2. Fullwidth forms read as their ASCII twins ("７" and "７／１０" are 7) and the minus sign "−" as
   "-". No other digits count: not those of other scripts ("٧"), nor superscript or circled ones
   ("⁷", "①"), which mark footnotes and list items more often than ratings.
3. Markup and code hold no rating and are removed first: tags ("<h1>", "</b>", "<br/>"), comments
   and the content of <script> and <style> elements, and calls or indexes, i.e. a bracket directly
   after a word with what it encloses ("alert(1)", "f(7)", "x[3]", "7(ish)"). Text between tags
   still counts ("<b>7</b>" is 7); a bracket after a space is prose ("(7)", "I'd say (7)").
4. Numbers are collected: standalone integers or decimals ("7", "10.", "-1", "7.5"; not "7th",
   "#1" or "v2"), and the words zero..ten only where they are the whole answer ("Seven.") or are
   followed by "out of ten" or "/10" ("seven out of ten"), so "no one knows" is no rating.
   A "/10" or "out of 10" after a number is the scale, not a second number. Emphasis and other
   punctuation around a number do not matter ("**8**", "Rating: 7", "I'd rate it a 3.").
5. Valid only if exactly one distinct number remains and it is an integer from 0 to 10.

So "7/10", "Seven", "I'd say 8 out of 10", "10." and "8\\nbut 9 later" parse; "", "6 or 7", "3-4",
"between 4 and 5", "11", "-1", "7.5", "7th", "A big one.", "N/A" and "<script>alert(1)</script>"
are recorded as invalid. ``CATALOGUE`` in tests/test_survey.py lists many more answers with their
outcomes.

On Pew's 4-point scale (``survey.scale: pew4``) the same first line, without markup, is read by
:func:`parse_pew4`: a lone letter A-D at its start ("B", "B.", "(B)", "B) A moderately big
problem"), or the words of exactly one answer ("A very big problem", "small"); when both appear
they must agree. A letter followed by a word ("A small problem") is the article, not an answer, and
a negated answer ("not a very big problem") is none.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from .llm.base import Completion, OptionScores
from .scales import PEW4, Scale, ZERO_TEN
from .types import SurveyAnswer

# Rule 2: U+FF01..FF5E are ASCII 0x21..0x7E shifted; U+3000 is the ideographic space.
_ASCII_TWINS = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: " ", 0x2212: "-"}
_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_WORD = "(" + "|".join(_WORDS) + ")"
_SCALE = r"(?:\s*/\s*10|\s+out\s+of\s+(?:10|ten))(?!\w)"
_OUT_OF = re.compile(_SCALE, re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\w#.])-?[0-9]+(?:\.[0-9]+)?(?!\w)")  # [0-9], not \d: no other scripts
_WORD_ALONE = re.compile(r"\W*" + _WORD + r"\W*", re.IGNORECASE)
_WORD_OF_TEN = re.compile(r"\b" + _WORD + _SCALE, re.IGNORECASE)

# Rule 3. Code elements and comments may be cut off by the end of the line, hence the "|$".
_CODE_ELEMENT = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|$)|<!--.*?(?:-->|$)", re.IGNORECASE)
_TAG = re.compile(r"<[/!?]?[A-Za-z][^<>]*>")
_CALL = re.compile(r"\w[\w.]*[(\[][^()\[\]]*(?:[)\]]|$)")  # innermost call; nested ones take rounds


def parse_rating(text: str) -> int | None:
    """The 0-10 rating stated in ``text`` by the module's rules, or None if there is not exactly one."""
    line = _prose(_answer_line(text))
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


_NOT = re.compile(r"\bnot\b", re.IGNORECASE)
_PEW4_LETTER = re.compile(r"^[\W_]*([A-D])(?:[\W_]*$|\s*[.):])")
_PEW4_WORDS = {re.compile(r"\bnot\s+a\s+problem\b", re.IGNORECASE): 0, re.compile(r"\bsmall\b", re.IGNORECASE): 1,
               re.compile(r"\bmoderately\s+big\b", re.IGNORECASE): 2, re.compile(r"\bvery\s+big\b", re.IGNORECASE): 3}


def parse_pew4(text: str) -> int | None:
    """The score 0..3 (3 = a very big problem) of a Pew-scale answer, or None (module docstring)."""
    line = _prose(_answer_line(text)).strip()
    letter = _PEW4_LETTER.match(line)
    found = {PEW4.options.index(letter.group(1))} if letter else set()
    words = {score for pattern, score in _PEW4_WORDS.items() if pattern.search(line)}
    negated = _NOT.search(line) is not None and words != {0}  # "not a very big problem" is no answer
    if negated or len(words) > 1 or (words and found and words != found):
        return None
    found |= words
    return found.pop() if len(found) == 1 else None


def parse_answer(text: str, scale: Scale = ZERO_TEN) -> int | None:
    """The score a greedy answer states on ``scale``, or None when it states none unambiguously."""
    return parse_pew4(text) if scale is PEW4 else parse_rating(text)


def _answer_line(text: str) -> str:
    """Rules 1-2: the first line, with fullwidth characters and the minus sign made ASCII."""
    return (text.strip().splitlines() or [""])[0].translate(_ASCII_TWINS)


def _prose(line: str) -> str:
    """Rule 3: the line without markup and code (each replaced by a space, so no words merge)."""
    line = _TAG.sub(" ", _CODE_ELEMENT.sub(" ", line))
    while True:
        line, calls = _CALL.subn(" ", line)
        if not calls:
            return line


def from_generation(iteration: int, agent: int, completion: Completion, scale: Scale = ZERO_TEN) -> SurveyAnswer:
    score = parse_answer(completion.text, scale)
    return SurveyAnswer(
        iteration=iteration, agent_index=agent, method="generate",
        score=score, valid=score is not None, raw=completion.text,
    )


def from_option_scores(iteration: int, agent: int, scores: OptionScores) -> SurveyAnswer:
    """Renormalise the option log-probs over the scale; argmax is the score, the mean its expectation.

    ``option_mass`` is the total probability the model put on answering exactly one option:
    a low mass means the model mostly wanted to say something else, which analyses may filter on.
    For ``source="top_k"`` it covers only the options the API's top-k returned, so it is a lower
    bound.
    """
    probs = normalise(scores.logprobs)
    if probs is None:
        return SurveyAnswer(iteration=iteration, agent_index=agent, method="logprobs",
                            score=None, valid=False, raw=scores.text, source=scores.source)
    return SurveyAnswer(
        iteration=iteration, agent_index=agent, method="logprobs",
        score=max(range(len(probs)), key=probs.__getitem__), valid=True,
        expected_score=sum(i * p for i, p in enumerate(probs)), probs=tuple(probs),
        # Exact for "logprobs". For "top_k" only the options the API's top-k returned count (the
        # rest are -inf, i.e. 0), so it is a lower bound on the true mass. None for "generated".
        option_mass=(sum(math.exp(lp) for lp in scores.logprobs)
                     if scores.source in ("logprobs", "top_k") else None),
        raw=scores.text, source=scores.source,
    )


def from_both(iteration: int, agent: int, completion: Completion, scores: OptionScores,
              scale: Scale = ZERO_TEN) -> SurveyAnswer:
    """One survey measured both ways on the same prompt: the greedy answer, parsed, is the score
    (the paper's measure); the distribution's expectation, mass and source ride along."""
    greedy = from_generation(iteration, agent, completion, scale)
    dist = from_option_scores(iteration, agent, scores)
    return dist.model_copy(update={"method": "both", "score": greedy.score, "valid": greedy.valid,
                                   "raw": greedy.raw})


def normalise(logprobs: Sequence[float]) -> list[float] | None:
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    if not finite:
        return None
    top = max(finite)
    weights = [math.exp(lp - top) if math.isfinite(lp) else 0.0 for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def answer(iteration: int, agent: int, completion: Completion | None, scores: OptionScores | None,
           scale: Scale = ZERO_TEN) -> SurveyAnswer:
    """The answer from what was asked: the greedy answer and the distribution (``both``), or
    either alone (``generate`` / ``logprobs``)."""
    if completion is not None and scores is not None:
        return from_both(iteration, agent, completion, scores, scale)
    if completion is not None:
        return from_generation(iteration, agent, completion, scale)
    if scores is None:
        raise ValueError("a survey answer needs a completion or option scores")
    return from_option_scores(iteration, agent, scores)
