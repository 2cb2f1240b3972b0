"""Survey options read from the top alternatives an OpenAI-compatible API returns per generated
token: pure arithmetic, no SDK and no requests.

An option of several tokens ("10" as "1" + "0" on SmolLM2 or Llama) is not among the first
token's alternatives; only its first token is, pooled with the one-token option "1". Both are
then split exactly from the alternatives *after* that token (:func:`split_heads`):
P("10") = P("1") P("0" | "1") and P("1") = P("1") P(the word ends | "1"). Where those
alternatives cannot be had, both options are left out (-inf, a partial distribution), never
guessed: giving "1" the whole of P("1") is what once made a model that answers 10 read as 1.

A chat model asked to begin its answer with the prefix ("Rating: ") writes that prefix itself,
so its answer is not its first token: :func:`answer_step` finds the token where it starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

Alternatives = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class TokenStep:
    """One generated token and the top alternatives the server returned at its position."""

    token: str
    alternatives: Alternatives


def parse_option(text: str, options: Sequence[str]) -> int | None:
    """The longest option ``text`` starts with as a whole token: "10/10" -> "10", "Seven" -> None."""
    body, best, best_len = text.strip(), None, 0
    for i, option in enumerate(o.strip() for o in options):
        whole = body.startswith(option) and (len(body) == len(option) or not body[len(option)].isalnum())
        if option and whole and len(option) > best_len:
            best, best_len = i, len(option)
    return best


def logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def map_alternatives(alternatives: Sequence[tuple[str, float]], options: Sequence[str]) -> tuple[float, ...]:
    # "7" and " 7" are the same answer, so alternatives that strip to one text pool their mass.
    by_text: dict[str, list[float]] = {}
    for token, logprob in alternatives:
        by_text.setdefault(token.strip(), []).append(logprob)
    return tuple(logsumexp(by_text.get(o.strip(), [])) for o in options)


def log_word_ends(alternatives: Sequence[tuple[str, float]]) -> float:
    """log P(the next token does not continue the word): 1 minus the alternatives that start with
    a letter or digit, as :func:`parse_option` reads a whole token (mass outside them counts as an end)."""
    going_on = sum(math.exp(lp) for token, lp in alternatives if token[:1].isalnum())
    return math.log1p(-going_on) if going_on < 1 else -math.inf


def top_k_source(scores: Sequence[float]) -> Literal["logprobs", "top_k"]:
    """``"logprobs"`` when the alternatives scored every option, else ``"top_k"``: some option was
    outside them (-inf), so the distribution is partial, not merely peaked."""
    return "logprobs" if scores and all(math.isfinite(s) for s in scores) else "top_k"


def answer_step(steps: Sequence[TokenStep], prefix: str) -> int | None:
    """The step where the answer starts: the first token that takes the text beyond the assistant
    ``prefix`` (which a model asked to begin with it may write first, whole or in part, with any
    whitespace). None when the text leaves the prefix for something else ("The answer is ...")
    or never gets past it."""
    head, text = prefix.strip(), ""
    for i, step in enumerate(steps):
        text += step.token
        body = text.strip()
        if body and not head.startswith(body):
            before = text[: len(text) - len(step.token)].strip()  # a start of head, or it would have left
            return i if before in ("", head) else None
    return None


def open_heads(alternatives: Sequence[tuple[str, float]], options: Sequence[str],
               scores: Sequence[float]) -> list[str]:
    """The alternatives (raw text, likeliest first) that start an option absent from them ("1"
    of a "10" that is two tokens): each needs the alternatives after it to be split."""
    heads = []
    for raw, _ in sorted(alternatives, key=lambda a: -a[1]):
        stem = raw.strip()
        if stem and any(o.strip() != stem and o.strip().startswith(stem) and s == -math.inf
                        for o, s in zip(options, scores)):
            heads.append(raw)
    return list(dict.fromkeys(heads))


def split_heads(alternatives: Sequence[tuple[str, float]], options: Sequence[str], scores: Sequence[float],
                after: Mapping[str, Alternatives | None]) -> tuple[float, ...]:
    """``scores`` with the heads of ``after`` (:func:`open_heads`) split, see the module docstring.
    ``after[raw]`` holds the alternatives after head ``raw``; None where they could not be had,
    and then the options that head starts (and the one it is) are left out (-inf)."""
    new = list(scores)
    for stem in dict.fromkeys(raw.strip() for raw in after):
        raws = [(raw, lp) for raw, lp in alternatives if raw.strip() == stem]
        known = all(after.get(raw) is not None for raw, _ in raws)
        for i, option in enumerate(o.strip() for o in options):
            if option != stem and not (option.startswith(stem) and scores[i] == -math.inf):
                continue
            if not known:
                new[i] = -math.inf
                continue
            rest = option[len(stem):]
            new[i] = logsumexp([lp + _then(after[raw] or (), rest) for raw, lp in raws])
    return tuple(new)


def _then(alternatives: Alternatives, rest: str) -> float:
    """log P(what follows the head): the word ending there (``rest`` empty) or token ``rest``."""
    if not rest:
        return log_word_ends(alternatives)
    return logsumexp([lp for token, lp in alternatives if token == rest])
