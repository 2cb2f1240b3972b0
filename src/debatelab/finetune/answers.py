"""Self-generated training data: a partisan agent answers the interview questions (paper §5).

The agent sees the debate template (system message = the persona's background story, user
message = the question) and answers every question ``k`` times at temperature 1.0.

SFT dataset (JSONL, one object per line, ordered by question then sample)::

    {"prompt": [{"role": "user", "content": "<question>"}],
     "completion": [{"role": "assistant", "content": "<answer>"}],
     "question_id": 3, "question": "<question>", "sample": 0,
     "persona_id": "r000-s0", "party": "republican", "seed": 123456789}

``prompt``/``completion`` is TRL's conversational prompt-completion format: SFTTrainer trains on
the completion only. With ``include_persona=True`` the prompt starts with the persona's system
message; the default leaves it out, as in the paper, so the model learns the answers as its own.
The other keys are metadata (the trainers drop unused columns): ``seed`` is the seed of the
generation that was kept.

Unusable answers (empty, or containing chat-template markup) are regenerated with new seeds up
to ``max_attempts`` times in all, then dropped: the dataset simply lacks those (question_id,
sample) rows, ``len(questions) * k - len(rows)`` of them, and a warning is logged. Only when
nothing usable came back at all does generation fail (RunFailed).

DPO dataset: ``dpo_pairs`` joins a target-party and an other-party SFT dataset on
(question_id, sample)::

    {"prompt": [{"role": "user", "content": "<question>"}],
     "chosen": [{"role": "assistant", "content": "<target party's answer>"}],
     "rejected": [{"role": "assistant", "content": "<other party's answer>"}],
     "question_id": 3, "sample": 0}

The DPO prompt never carries a persona: chosen and rejected come from different personas.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..debate import derive_seed
from ..errors import DebatelabError, RunFailed
from ..files import atomic_open
from ..llm.base import LLM, GenerateRequest, Message, Prompt
from ..readers import read_jsonl
from ..types import Persona

logger = logging.getLogger(__name__)
Record = dict[str, Any]
_KEYS = ("question_id", "sample", "question", "completion", "party")


def answer_prompt(persona: Persona, question: str) -> Prompt:
    """The debate template: the background story as system message, the question as user message."""
    return Prompt(messages=(Message("system", persona.background), Message("user", question)))


def clean_answer(text: str) -> str | None:
    text = text.strip()
    return text if text and "<|" not in text and "|>" not in text else None


def answer_dataset(
    llm: LLM, persona: Persona, questions: Sequence[str], k: int = 20, *, seed: int = 0,
    temperature: float = 1.0, max_tokens: int = 256, include_persona: bool = False, max_attempts: int = 3,
) -> list[Record]:
    """``k`` answers per question from ``persona`` (see the module docstring for format and drops)."""
    if k < 1 or not questions:
        raise DebatelabError("an answer dataset needs at least one question and k >= 1")
    slots = [(i, j) for i in range(len(questions)) for j in range(k)]
    done: dict[tuple[int, int], tuple[str, int]] = {}
    for attempt in range(max_attempts):
        todo = [s for s in slots if s not in done]
        if not todo:
            break
        # persona.id is part of the seed so two personas never share sampling noise.
        seeds = [derive_seed(seed, "answer", persona.id, i, j, attempt) for i, j in todo]
        outs = llm.generate([
            GenerateRequest(answer_prompt(persona, questions[i]), temperature=temperature,
                            max_tokens=max_tokens, seed=s)
            for (i, _), s in zip(todo, seeds)
        ])
        for slot, s, out in zip(todo, seeds, outs):
            answer = clean_answer(out.text)
            if answer:
                done[slot] = (answer, s)
    if not done:
        raise RunFailed(f"persona {persona.id} gave no usable answer in {max_attempts} attempts")
    if len(done) < len(slots):
        logger.warning("dropped %d of %d answers from persona %s (empty or malformed after %d attempts)",
                       len(slots) - len(done), len(slots), persona.id, max_attempts)
    return [_record(persona, questions[i], i, j, *done[(i, j)], include_persona) for i, j in slots if (i, j) in done]


def _record(persona: Persona, question: str, i: int, j: int, answer: str, seed: int, include_persona: bool) -> Record:
    prompt = [Message("user", question).as_dict()]
    if include_persona:
        prompt.insert(0, Message("system", persona.background).as_dict())
    return {
        "prompt": prompt, "completion": [Message("assistant", answer).as_dict()], "question_id": i,
        "question": question, "sample": j, "persona_id": persona.id, "party": persona.party, "seed": seed,
    }


def dpo_pairs(target_rows: Sequence[Record], other_rows: Sequence[Record]) -> list[Record]:
    """Preference pairs: the target party's answer is chosen, the other party's rejected.

    Both datasets must answer the same questions (same ids and texts) and come from different
    parties; samples missing on either side (dropped answers) are skipped with a warning.
    """
    target, other = _index(target_rows, "target"), _index(other_rows, "other")
    parties = {r["party"] for r in target_rows}, {r["party"] for r in other_rows}
    if len(parties[0]) != 1 or len(parties[1]) != 1 or parties[0] == parties[1]:
        raise DebatelabError(f"DPO needs one party per dataset and two different parties, "
                             f"got {sorted(parties[0])} and {sorted(parties[1])}")
    if _questions(target_rows) != _questions(other_rows):
        raise DebatelabError("DPO datasets answer different questions (were they made from the same questions file?)")
    keys = [key for key in target if key in other]
    if len(keys) < max(len(target), len(other)):
        logger.warning("DPO: %d target and %d other answers have no partner and are skipped",
                       len(target) - len(keys), len(other) - len(keys))
    return [{
        "prompt": [Message("user", target[key]["question"]).as_dict()],
        "chosen": list(target[key]["completion"]), "rejected": list(other[key]["completion"]),
        "question_id": key[0], "sample": key[1],
    } for key in keys]


def _index(rows: Sequence[Record], side: str) -> dict[tuple[int, int], Record]:
    if not rows:
        raise DebatelabError(f"the {side} DPO dataset is empty")
    index: dict[tuple[int, int], Record] = {}
    for number, row in enumerate(rows, start=1):
        missing = [key for key in _KEYS if key not in row]
        if missing:
            raise DebatelabError(f"{side} DPO dataset row {number} lacks {', '.join(missing)}")
        key = (row["question_id"], row["sample"])
        if key in index:
            raise DebatelabError(f"{side} DPO dataset has question {key[0]} sample {key[1]} twice")
        index[key] = row
    return index


def _questions(rows: Iterable[Record]) -> dict[int, str]:
    return {r["question_id"]: r["question"] for r in rows}


def save_jsonl(rows: Iterable[Record], path: Path) -> None:
    """One JSON object per line, atomically (readers never see half a dataset)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    except OSError as exc:
        raise DebatelabError(f"cannot write dataset {path}: {exc.strerror}") from None


def load_jsonl(path: Path) -> list[Record]:
    return [row for _, row in read_jsonl(path, "dataset")]


def dataset_hash(path: Path) -> str:
    """sha256 of the file's bytes, for training manifests."""
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise DebatelabError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
