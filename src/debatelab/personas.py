"""Persona bank: generate partisan background stories with a model, store and load them (JSONL).

Each persona gets a distinct name drawn from a built-in list of common US first names. Outputs
that are empty or malformed are regenerated with a new seed a bounded number of times; a request
the backend gave up on stops generation at once with the backend's error (after the wave's good
personas were handed to ``on_batch``), rather than being mistaken for a malformed story.

The bank is JSON Lines split on "\n" only. Any other character that ``str.splitlines`` splits on
(U+0085, U+2028, U+2029; the C0 ones JSON escapes anyway) is written escaped, so a bank this
module wrote always reads back identical, and banks written raw by older versions still load.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Callable, Iterable, Sequence

from pydantic import ValidationError

from .debate import derive_seed
from .errors import DebatelabError, RunFailed
from .files import atomic_open
from .llm.base import LLM, GenerateRequest
from .prompts import TEMPLATE_VERSION, persona_prompt
from .readers import read_jsonl
from .topics import BUILTIN_TOPICS, Topic
from .types import Persona
from .validation import describe

PARTIES = ("republican", "democrat")


@lru_cache(maxsize=1)
def first_names() -> tuple[str, ...]:
    text = files("debatelab").joinpath("data/first_names.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def draw_names(count: int, seed: int, exclude: Iterable[str] = ()) -> list[str]:
    pool = [n for n in first_names() if n not in set(exclude)]
    if count > len(pool):
        raise DebatelabError(f"asked for {count} distinct names but only {len(pool)} are available")
    return random.Random(seed).sample(pool, count)


def clean_background(text: str, min_words: int) -> str | None:
    """The story trimmed to whole sentences, or None if it is malformed (empty, too short, markup)."""
    text = text.strip().strip('"').strip()
    if "<|" in text or "|>" in text:
        return None
    last_stop = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
    if last_stop > len(text) // 2:
        text = text[: last_stop + 1]
    return text if len(text.split()) >= min_words else None


def persona_topics(extra: Sequence[Topic] = ()) -> list[Topic]:
    """Like the paper, one identity covers all four topics (plus any user topic that states
    party positions), whatever the debate is about."""
    topics = dict(BUILTIN_TOPICS)
    topics.update({t.id: t for t in extra if t.positions})
    return list(topics.values())


def generate_personas(
    llm: LLM, model: str, counts: dict[str, int], seed: int, *, topics: Sequence[Topic] | None = None,
    temperature: float = 1.0, max_tokens: int = 200, min_words: int = 25, max_attempts: int = 4,
    on_batch: Callable[[list[Persona]], None] | None = None, existing: Sequence[Persona] = (),
) -> list[Persona]:
    """Generate ``counts[party]`` personas per party in batched waves.

    ``existing`` personas (from an interrupted run) are kept and not regenerated; ``on_batch``
    receives each wave's accepted personas so callers can commit them immediately.
    """
    topics = list(topics or persona_topics())
    wanted = [(party, i) for party in PARTIES for i in range(counts.get(party, 0))]
    names = draw_names(len(wanted), seed)
    slots = [(party, i, name) for (party, i), name in zip(wanted, names)]
    done = {p.id: p for p in existing}
    for attempt in range(max_attempts):
        todo = [s for s in slots if _persona_id(seed, s[0], s[1]) not in done]
        if not todo:
            break
        prompts = [persona_prompt(name, party, topics) for party, _, name in todo]
        seeds = [derive_seed(seed, "persona", party, i, attempt) for party, i, _ in todo]
        outs = llm.generate([
            GenerateRequest(p, temperature=temperature, max_tokens=max_tokens, seed=s) for p, s in zip(prompts, seeds)
        ])
        accepted, failed = [], []
        for (party, i, name), prompt, s, out in zip(todo, prompts, seeds, outs):
            if out.error is not None:
                failed.append(out.error)
                continue
            story = clean_background(out.text, min_words)
            if story:
                accepted.append(Persona(
                    id=_persona_id(seed, party, i), party=party, name=name, background=story, model=model,
                    seed=s, prompt=prompt.messages[-1].content, template_version=TEMPLATE_VERSION,
                ))
        done.update({p.id: p for p in accepted})
        if on_batch and accepted:
            on_batch(accepted)
        if failed:  # the backend already retried these as far as its policy allows
            raise RunFailed(f"persona generation failed: {len(failed)} request(s) to model {model!r} failed "
                            f"for good: {failed[0]}")
    missing = [s for s in slots if _persona_id(seed, s[0], s[1]) not in done]
    if missing:
        raise RunFailed(f"persona generation failed for {len(missing)} persona(s) after {max_attempts} attempts "
                        f"(model {model!r} kept returning empty or malformed stories)")
    return [done[_persona_id(seed, party, i)] for party, i, _ in slots]


def _persona_id(seed: int, party: str, index: int) -> str:
    return f"{party[0]}{index:03d}-s{seed}"


# Line breaks for str.splitlines() that JSON may leave raw inside strings (the C0 ones, \x0b, \x0c
# and \x1c-\x1e, JSON must escape): escaped on writing, so no reader can cut a record in two.
_RAW_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_RAW_BREAK = re.compile("[\x85\u2028\u2029]")


def bank_line(persona: Persona) -> str:
    """One persona as one JSON line that no line splitter can break."""
    return _RAW_BREAK.sub(lambda m: _RAW_BREAKS[m.group()], persona.model_dump_json())


def save_bank(personas: Sequence[Persona], path: Path) -> None:
    """Write the bank atomically: a reader never sees a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, newline="\n") as fh:
            fh.writelines(bank_line(p) + "\n" for p in personas)
    except OSError as exc:
        raise DebatelabError(f"cannot write persona bank {path}: {exc.strerror}") from None


def load_bank(path: Path) -> list[Persona]:
    personas = []
    for number, row in read_jsonl(path, "persona bank"):
        try:
            personas.append(Persona.model_validate(row))
        except ValidationError as exc:
            raise DebatelabError(f"persona bank {path} line {number} is malformed: {describe(exc)}") from None
    _check_bank(personas, path)
    return personas


def _check_bank(personas: Sequence[Persona], path: Path) -> None:
    if not personas:
        raise DebatelabError(f"persona bank {path} is empty")
    for attr in ("id", "name"):
        values = [getattr(p, attr) for p in personas]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise DebatelabError(f"persona bank {path} has duplicate persona {attr}s: {', '.join(dupes)}")
