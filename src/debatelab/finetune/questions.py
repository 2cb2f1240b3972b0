"""Interview questions for self-fine-tuning (paper §5, Supplementary Table 2).

The ten seed questions are the paper's; the model writes the rest with the paper's prompt, one
request per seed question as the example, until there are ``target`` distinct questions. The
result is stored as plain text, one question per line, so users can read and edit it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..debate import derive_seed
from ..errors import DebatelabError, RunFailed
from ..files import atomic_open
from ..llm.base import LLM, GenerateRequest, Message, Prompt
from ..readers import read_text

SEED_QUESTIONS: tuple[str, ...] = (
    "Could you discuss your perspective on significant political issues facing America today?",
    "How do you balance Second Amendment rights with the need for gun control measures?",
    "How do you balance the need for national security with the preservation of personal freedoms?",
    "How do you believe the U.S. should handle immigration and border security?",
    "What core political ideals most significantly shape your viewpoint on governance and policy-making?",
    "What are your views on racial inequality and systemic racism in American society?",
    "What is your stance on the government's role in addressing climate change and environmental protection?",
    "What role do you think diversity plays in shaping the cultural landscape of America?",
    "What values do you believe are essential to the American identity?",
    "Which political issues do you believe are most urgent for the next president to address?",
)

QUESTION_PROMPT = (
    "Generate 10 questions to elicit one's opinion regarding US politics. Example question: {question}. "
    "Phrase your question in a neutral way without biasing the answer"
)

MIN_WORDS, MAX_WORDS = 4, 40
# List markers models put before items: "1.", "2)", "(3)", "-", "*", "•", "Q4:", "Question 5:".
_ENUMERATOR = re.compile(r"^\s*(?:[-*•]+\s*|\(?\d{1,3}[.):]\s*|(?:q|question)\s*\d{0,3}\s*[.):]\s*)+", re.I)
# Chat-template tokens and template echoes ("{question}", "[INST]") are never part of a real question.
_MARKUP = re.compile(r"<\||\|>|[<>{}\[\]]")
# Small models often run a numbered list together on one line: split "...? 2. What...".
_INLINE_ITEM = re.compile(r"(?<=\?)\s+(?=\(?\d{1,3}[.)]\s)")


def normalise_question(text: str) -> str:
    """The duplicate key: casefolded, list marker removed, punctuation dropped, spaces collapsed."""
    text = _ENUMERATOR.sub("", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", "", text).split())  # deleted, so "U.S." == "US"


def clean_question(line: str) -> str | None:
    """One parsed line as a question, or None when it is not a real question."""
    text = _ENUMERATOR.sub("", line.strip()).replace("**", "").strip().strip("\"'“”").strip()
    text = " ".join(text.split())
    if not text.endswith("?") or _MARKUP.search(text):
        return None
    return text if MIN_WORDS <= len(text.split()) <= MAX_WORDS else None


def parse_questions(text: str) -> list[str]:
    """All real questions in one model answer, in order (duplicates are handled by the caller)."""
    lines = [part for line in text.splitlines() for part in _INLINE_ITEM.split(line)]
    return [q for q in map(clean_question, lines) if q]


def question_prompt(example: str) -> Prompt:
    return Prompt(messages=(Message("user", QUESTION_PROMPT.format(question=example)),))


def generate_questions(
    llm: LLM, target: int = 100, seed: int = 0, *, temperature: float = 1.0, max_tokens: int = 400,
    max_rounds: int = 20, examples: Sequence[str] = SEED_QUESTIONS,
) -> list[str]:
    """The ``examples`` first, then model-written questions until ``target`` distinct ones.

    Each round is one batched call with one request per example question; every request has its
    own derived seed, so the same ``seed`` gives the same list. Raises RunFailed when ``max_rounds``
    rounds still leave fewer than ``target`` distinct questions.
    """
    if target < 1 or not examples:
        raise DebatelabError("question generation needs a target of at least 1 and at least one example question")
    questions: list[str] = []
    seen: set[str] = set()
    for q in examples:
        _add(q, questions, seen)
    for round_ in range(max_rounds):
        if len(questions) >= target:
            break
        requests = [
            GenerateRequest(question_prompt(ex), temperature=temperature, max_tokens=max_tokens,
                            seed=derive_seed(seed, "questions", round_, i))
            for i, ex in enumerate(examples)
        ]
        for out in llm.generate(requests):
            for q in parse_questions(out.text):
                _add(q, questions, seen)
    if len(questions) < target:
        raise RunFailed(f"question generation found only {len(questions)} of {target} distinct questions after "
                        f"{max_rounds} rounds (the model kept repeating questions or not writing questions)")
    return questions[:target]


def _add(question: str, questions: list[str], seen: set[str]) -> None:
    key = normalise_question(question)
    if key and key not in seen:
        seen.add(key)
        questions.append(question)


def save_questions(questions: Sequence[str], path: Path) -> None:
    """One question per line, atomically; a header comment tells users how to edit the file."""
    lines = [" ".join(q.split()) for q in questions]  # a newline inside a question would split it
    _check(lines, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            fh.write("# One question per line. Blank lines and lines starting with # are ignored.\n")
            fh.writelines(q + "\n" for q in lines)
    except OSError as exc:
        raise DebatelabError(f"cannot write questions file {path}: {exc.strerror}") from None


def load_questions(path: Path) -> list[str]:
    """The questions in ``path``; blank lines and whole-line ``#`` comments are skipped."""
    lines = [line.strip() for line in read_text(path, "questions file").splitlines()]
    questions = [line for line in lines if line and not line.startswith("#")]
    _check(questions, path)
    return questions


def _check(questions: Sequence[str], path: Path) -> None:
    if not questions:
        raise DebatelabError(f"questions file {path} has no questions")
    first: dict[str, int] = {}
    for number, q in enumerate(questions, start=1):
        key = normalise_question(q)
        if key in first:
            raise DebatelabError(f"questions file {path}: question {number} repeats question {first[key]}: {q!r}")
        first[key] = number
