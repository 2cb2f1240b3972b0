"""A dry run: the real engine (persona generation, debate plan, wave runner) on counting backends.

Nothing here re-implements the engine: :func:`dry_run` calls the same functions a real run does
(:func:`~debatelab.planning.generate_bank`, :func:`~debatelab.planning.plan_debates`,
:class:`~debatelab.runner.WaveRunner`) with a :class:`CountingLLM` per model in place of the
backends and a :class:`MemorySink` in place of the run's database, so the calls and requests it
counts are the ones a fresh local run sends, and nothing touches the disk.

The counting backend answers every generate request with :func:`filler` of exactly
``max_tokens`` one-token words: every reply, survey answer and persona story is as long as it may
be, so completion tokens are an upper bound and the history grows by ``max_tokens`` per reply.
Persona stories made of filler pass the real validation (``min_words <= max_tokens`` is checked
by the config), so generation takes one attempt, as with a model that writes well-formed stories.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .config import ExperimentConfig
from .llm.base import LLM, Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest
from .personas import load_bank
from .planning import check_feasible, generate_bank, plan_debates
from .runner import WaveRunner
from .types import Persona, SurveyAnswer, Turn

TokenCounter = Callable[[Prompt], int]

# "the" is one token for the usual tokenizers, and "the " is 4 characters, so under the
# characters / 4 fallback too a reply of n filler words adds n tokens to every later prompt.
FILLER_WORD = "the"


def filler(words: int) -> str:
    """A reply of ``words`` one-token words: no speaker line, no stop string, no rating."""
    return " ".join([FILLER_WORD] * words)


@dataclass(frozen=True)
class TokenRules:
    """How a backend's requests turn into tokens: ``count`` gives one prompt's tokens."""

    count: TokenCounter
    score_echo: bool = False
    """Scoring by echo (legacy completions APIs) sends each option as its own prompt, plus the bare one."""
    score_completion: int = 0
    """Completion tokens one score request costs (an API samples one token to read its logprobs)."""


@dataclass
class Tally:
    """What one backend was asked: calls, requests and their tokens."""

    generate_calls: int = 0
    generate_requests: int = 0
    score_calls: int = 0
    score_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        """Calls and requests (generate, then score), then prompt and completion tokens."""
        return dataclasses.astuple(self)


class CountingLLM(LLM):
    """A backend that counts what it is asked and answers with filler and uniform scores."""

    def __init__(self, rules: TokenRules, name: str = ""):
        self.rules = rules
        self.name = name
        self.tally = Tally()
        self._last: dict[int, tuple[Prompt, int]] = {}  # id -> (prompt, tokens) of the previous call

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        prompt = self._count([r.prompt for r in requests])
        completion = [r.max_tokens for r in requests]
        self.tally.generate_calls += 1
        self.tally.generate_requests += len(requests)
        self._add_tokens(sum(prompt), sum(completion))
        return [Completion(filler(r.max_tokens), p, c, "length") for r, p, c in zip(requests, prompt, completion)]

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        rules = self.rules
        sends = [len(r.options) + 1 if rules.score_echo else 1 for r in requests]
        self.tally.score_calls += 1
        self.tally.score_requests += len(requests)
        self._add_tokens(sum(n * c for n, c in zip(sends, self._count([r.prompt for r in requests]))),
                         rules.score_completion * len(requests))
        return [OptionScores(tuple([-math.log(len(r.options))] * len(r.options))) for r in requests]

    def identity(self) -> dict[str, Any]:
        return {"backend": "dry-run", "name": self.name}

    def _count(self, prompts: Sequence[Prompt]) -> list[int]:
        # A survey prompt goes to generate, then to score, in one wave (the same object): it is
        # tokenized once. Only the previous call's prompts are kept, so memory stays flat.
        last = self._last
        counts = [last[id(p)][1] if last.get(id(p), (None,))[0] is p else self.rules.count(p) for p in prompts]
        self._last = {id(p): (p, n) for p, n in zip(prompts, counts)}
        return counts

    def _add_tokens(self, prompt: int, completion: int) -> None:
        self.tally.prompt_tokens += prompt
        self.tally.completion_tokens += completion


@dataclass
class MemorySink:
    """A :class:`~debatelab.runner.ResultSink` that keeps counts, not results (a fresh run)."""

    replies: int = 0
    surveys: int = 0
    complete: set[str] = field(default_factory=set)

    def status(self, debate_id: str) -> str:
        return "complete" if debate_id in self.complete else "pending"

    def progress(self, debate_id: str) -> tuple[list[Turn], set[tuple[int, int]]]:
        return [], set()

    def mark_running(self, debate_ids: Iterable[str]) -> None:
        pass

    def add_results(self, turns: list[tuple[str, Turn]], surveys: list[tuple[str, SurveyAnswer]],
                    finished: list[str], failed: Iterable[tuple[str, int, str]] = ()) -> None:
        self.replies += len(turns)
        self.surveys += len(surveys)
        self.complete.update(finished)  # a counting backend never fails a request


@dataclass(frozen=True)
class DryRun:
    """What a fresh run of a config sends: per model key ("" = the experiment's model)."""

    debates: int
    agents: int
    bank: list[Persona]
    """The personas the debates seat: the config's bank, or those generated (with filler stories)."""
    persona_calls: Tally
    """Persona generation (on the experiment's model); all zero when the config names a bank."""
    models: dict[str, Tally]
    """The debates' calls per model key, as the runner made them."""
    replies: int
    surveys: int

    def total(self) -> Tally:
        out = self.persona_calls
        for tally in self.models.values():
            out = out + tally
        return out


def dry_run(config: ExperimentConfig, rules: TokenRules) -> DryRun:
    """Run ``config`` through the real engine on counting backends (one per model) and count it."""
    bank = load_bank(config.personas) if config.personas else None
    check_feasible(config, bank)
    persona_llm = CountingLLM(rules)
    if bank is None:
        bank = generate_bank(config, persona_llm)
    llm = CountingLLM(rules)
    seats = {key: CountingLLM(rules, key) for key in config.seat_backends()}
    specs = plan_debates(config, bank, llm.identity(), {k: s.identity() for k, s in seats.items()})
    sink = MemorySink()
    WaveRunner(llm, sink, config, seat_llms=seats).run(specs)
    agents = len(specs[0].agents) if specs else len(config.agents)
    models = {"": llm.tally, **{k: s.tally for k, s in seats.items()}}
    return DryRun(len(specs), agents, bank, persona_llm.tally, models, sink.replies, sink.surveys)


