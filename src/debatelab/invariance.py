"""Measurement invariance (``debatelab check-model MODEL --against OTHER``): does the same survey,
asked of the same personas, measure the same attitude on two backends of one model?

An attitude a run records should be the model's, not the backend's. One GGUF measured 8.6 in
process and 0.9 through a server's chat API (issue 17), because the two paths sent the model
different text. This check asks both backends the SAME survey prompts: personas generated once (on MODEL,
as a run would) or read from a bank, the preflight's seatings (:func:`.preflight.seat_personas`)
and the preflight's seeds, each prompt answered greedily (T=0, the paper's measure) and as a
distribution over the scale's options. Per topic and overall it reports:

- mean |Δ expected score|, over the surveys where both sides have a distribution with mass > 0
  (the verdict's number);
- mean |Δ greedy answer| and the share of equal greedy answers, over those valid on both sides;
- the mean total-variation distance ½·Σ|p−q| of the renormalised distributions;
- each side's mean option mass (how much the model wanted to answer with one option at all);
- how many prompts condition both backends on the same text (the hashes of
  ``llm.conditioning(prompt, purpose)``, for the greedy answer and for scoring), and whether each
  side's conditioning is exact (the text the model reads) or a server renders it.

Two backends are invariant when the overall mean |Δ expected score| is at most
:data:`INVARIANCE_TOLERANCE` (scaled to Pew's 4-point scale like the preflight's gap). Either
way it is a measurement: the command exits 0.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from pydantic import ValidationError

from . import survey
from .errors import DebatelabError
from .llm.base import LLM, GenerateRequest, ScoreRequest
from .llm.options import BackendOptions
from .personas import generate_personas
from .preflight import PARTIES, Asked, seat_personas, survey_plan
from .readers import read_yaml
from .scales import Scale, ZERO_TEN
from .topics import Topic
from .types import Persona, SurveyAnswer
from .validation import describe

INVARIANCE_TOLERANCE = 0.3
"""Largest overall mean |Δ expected score|, in points of the 0-10 scale, at which two backends
count as one measurement of the model: issue 17's target for an in-process model against the same
GGUF on a server, where only Q4 quantisation should differ. Scaled by top/10 on Pew's 4-point scale."""
SIDES = ("model", "against")
Loader = Callable[[str, BackendOptions | None], LLM]
"""Builds a backend from a model string and its options (the registry's ``load_llm``)."""


def read_backend_options(path: Path) -> BackendOptions:
    """A YAML mapping of backend options (the keys of a config's ``backend:``); one line when it
    cannot be read or holds an unknown key or a bad value."""
    data = read_yaml(path, "backend options file")
    if data is None:  # an empty file: every default
        return BackendOptions()
    if not isinstance(data, dict):
        raise DebatelabError(f"backend options file {path} must be a YAML mapping of option names to values")
    try:
        return BackendOptions.model_validate(data)
    except ValidationError as exc:
        raise DebatelabError(f"invalid backend options {path}: {describe(exc)}") from None


@dataclass(frozen=True)
class SideAnswer:
    """One side's answer to one prompt, and the hashes of the text it conditioned on."""

    score: int | None
    """The greedy answer, None when it is not an option of the scale (or the request failed)."""
    raw: str | None
    """The greedy completion as the model wrote it."""
    expected_score: float | None
    probs: tuple[float, ...] | None
    option_mass: float | None
    source: str | None
    error: str | None
    generate_sha: str
    score_sha: str
    exact: bool

    @property
    def has_distribution(self) -> bool:
        # A "generated" one-hot has no mass (None) but is what that backend measures; a true
        # distribution whose options got no probability at all is no measurement.
        return self.probs is not None and (self.option_mass is None or self.option_mass > 0)


@dataclass(frozen=True)
class PairedSurvey:
    """One prompt as both sides answered it."""

    topic: str
    role: str
    agent: str
    persona_id: str | None
    model: SideAnswer
    against: SideAnswer

    @property
    def compared(self) -> bool:
        return self.model.has_distribution and self.against.has_distribution

    @property
    def abs_delta_expected(self) -> float | None:
        if not self.compared:
            return None
        return abs(float(self.model.expected_score or 0.0) - float(self.against.expected_score or 0.0))

    @property
    def abs_delta_greedy(self) -> int | None:
        a, b = self.model.score, self.against.score
        return None if a is None or b is None else abs(a - b)

    @property
    def tv(self) -> float | None:
        """Total-variation distance of the two renormalised distributions."""
        if not self.compared:
            return None
        return 0.5 * sum(abs(p - q) for p, q in zip(self.model.probs or (), self.against.probs or ()))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "abs_delta_expected": self.abs_delta_expected,
                "abs_delta_greedy": self.abs_delta_greedy, "tv": self.tv}


@dataclass(frozen=True)
class Agreement:
    """How far the two sides' measurements lie apart on one topic (or on all, ``topic="all"``)."""

    topic: str
    surveys: int
    compared: int
    """Surveys with a distribution of mass > 0 on both sides."""
    mean_abs_delta_expected: float | None
    greedy_compared: int
    """Surveys with a valid greedy answer on both sides."""
    mean_abs_delta_greedy: float | None
    greedy_equal_share: float | None
    mean_tv: float | None
    option_mass_model: float | None
    option_mass_against: float | None
    same_prompt_generate: int
    """Prompts whose greedy-answer conditioning hashes are identical on both sides."""
    same_prompt_score: int
    """Prompts whose option-scoring conditioning hashes are identical on both sides."""
    invariant: bool


@dataclass(frozen=True)
class BackendSide:
    """What one side is and how it conditions on a survey prompt."""

    model: str
    identity: dict[str, Any]
    exact: bool
    """Whether every prompt's conditioning (greedy and scoring) is the exact text the model reads."""
    how_generate: str
    how_score: str
    sources: dict[str, int]
    """Surveys by distribution source (``logprobs``, ``top_k``, ``generated``; ``none`` without one)."""
    failed: int
    """Requests that failed for good (their answers count as invalid)."""


@dataclass
class InvarianceCheck:
    model: str
    against: str
    scale: str
    per_party: int
    seed: int
    tolerance: float
    personas: str
    sides: dict[str, BackendSide]
    topics: list[Agreement]
    overall: Agreement
    surveys: list[PairedSurvey]
    checked_at: str = ""

    @property
    def invariant(self) -> bool:
        return self.overall.invariant

    @property
    def verdict(self) -> str:
        o = self.overall
        if o.mean_abs_delta_expected is None:
            return (f"NOT invariant: no survey has a distribution with mass > 0 on both backends, so nothing "
                    f"was compared{self._notes()}")
        size = f"mean |Δ expected score| {o.mean_abs_delta_expected:.3f}"
        if o.invariant:
            return f"invariant within {self.tolerance:g}: {size} over {o.compared} surveys{self._notes()}"
        return f"NOT invariant: {size} > {self.tolerance:g} over {o.compared} surveys{self._notes()}"

    def _notes(self) -> str:
        """Why the numbers may differ: the text each side conditioned on."""
        notes, o = [], self.overall
        if o.same_prompt_score < o.surveys:
            notes.append(f"the backends condition on different text for {o.surveys - o.same_prompt_score}/{o.surveys} "
                         "survey prompts")
        notes += [f"{side.model}: the server renders the chat template, so its prompt hashes identify "
                  "requests, not tokens" for side in self.sides.values() if not side.exact]
        return "; " + "; ".join(notes) if notes else ""

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "surveys"},
                "invariant": self.invariant, "verdict": self.verdict,
                "surveys": [s.as_dict() for s in self.surveys]}


def measure(llm: LLM, plan: Sequence[Asked], scale: Scale) -> list[SideAnswer]:
    """Ask ``llm`` every question of ``plan`` greedily and as a distribution, in one batch each."""
    greedy = llm.generate([GenerateRequest(a.prompt, temperature=0.0, max_tokens=8, seed=a.seed) for a in plan])
    dists = llm.score_options([ScoreRequest(a.prompt, scale.options, seed=a.seed) for a in plan])
    out = []
    for asked, completion, scores in zip(plan, greedy, dists):
        gen, score = llm.conditioning(asked.prompt, "generate"), llm.conditioning(asked.prompt, "score")
        error = completion.error or scores.error
        answer = (SurveyAnswer(iteration=0, agent_index=0, method="both", score=None, valid=False) if error
                  else survey.from_both(0, 0, completion, scores, scale))
        out.append(SideAnswer(score=answer.score if answer.valid else None, raw=completion.text or None,
                              expected_score=answer.expected_score,
                              probs=answer.probs, option_mass=answer.option_mass, source=answer.source,
                              error=error, generate_sha=gen.sha(), score_sha=score.sha(),
                              exact=gen.exact and score.exact))
    return out


def describe_side(llm: LLM, model: str, plan: Sequence[Asked], answers: Sequence[SideAnswer]) -> BackendSide:
    """The side's identity and how it conditions on a survey prompt (told by its first prompt)."""
    first = plan[0].prompt
    return BackendSide(model=model, identity=llm.identity(), exact=all(a.exact for a in answers),
                       how_generate=llm.conditioning(first, "generate").how,
                       how_score=llm.conditioning(first, "score").how,
                       sources=dict(Counter(a.source or "none" for a in answers)),
                       failed=sum(a.error is not None for a in answers))


def agreement(topic: str, pairs: Sequence[PairedSurvey], tolerance: float) -> Agreement:
    """The statistics of :class:`Agreement` over ``pairs``."""
    expected = [p.abs_delta_expected for p in pairs if p.abs_delta_expected is not None]
    greedy = [p.abs_delta_greedy for p in pairs if p.abs_delta_greedy is not None]
    mean_expected = _mean(expected)
    return Agreement(
        topic=topic, surveys=len(pairs), compared=len(expected), mean_abs_delta_expected=mean_expected,
        greedy_compared=len(greedy), mean_abs_delta_greedy=_mean(greedy),
        greedy_equal_share=_mean([float(d == 0) for d in greedy]),
        mean_tv=_mean([p.tv for p in pairs if p.tv is not None]),
        option_mass_model=_mean([p.model.option_mass for p in pairs if p.model.option_mass is not None]),
        option_mass_against=_mean([p.against.option_mass for p in pairs if p.against.option_mass is not None]),
        same_prompt_generate=sum(p.model.generate_sha == p.against.generate_sha for p in pairs),
        same_prompt_score=sum(p.model.score_sha == p.against.score_sha for p in pairs),
        invariant=mean_expected is not None and mean_expected <= tolerance)


def _mean(values: Sequence[float | None]) -> float | None:
    # None, not NaN: "nothing to average" is written as null and printed as a dash.
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


@contextmanager
def _loaded(load: Loader, model: str, options: BackendOptions | None) -> Iterator[LLM]:
    """One side's backend, closed after use: the two are loaded one after the other, so two
    large models need not fit in memory at once."""
    llm = load(model, options)
    try:
        yield llm
    finally:
        llm.close()


def _side(llm: LLM, model: str, plan: Sequence[Asked], scale: Scale) -> tuple[BackendSide, list[SideAnswer]]:
    answers = measure(llm, plan, scale)
    return describe_side(llm, model, plan, answers), answers


def _no_seats() -> DebatelabError:
    return DebatelabError("no Republican and Democrat persona to seat: the check needs at least one of each")


def run_invariance(model: str, other: str, topics: Sequence[Topic], per_party: int, *,
                   options: BackendOptions | None = None, other_options: BackendOptions | None = None,
                   seed: int = 0, bank: Sequence[Persona] | None = None, scale: Scale = ZERO_TEN,
                   load: Loader | None = None) -> InvarianceCheck:
    """Ask ``model`` and ``other`` the same survey prompts and compare what they measure.
    ``load`` builds a backend from a model string and options (default: the registry's)."""
    if load is None:
        from .llm.registry import load_llm, split_model

        for name in (model, other):  # a bad string fails now, before a model loads for minutes
            split_model(name)
        load = load_llm
    seatings = seat_personas(bank, per_party, seed) if bank is not None else None
    if seatings == []:
        raise _no_seats()
    with _loaded(load, model, options) as llm:
        if seatings is None:  # generated once, on MODEL, as a run on it would
            people = generate_personas(llm, model, {p: per_party for p in PARTIES}, seed, topics=topics)
            seatings = seat_personas(people, per_party, seed)
            if not seatings:
                raise _no_seats()
        plan = survey_plan(seatings, topics, scale, seed)
        side_a, answers_a = _side(llm, model, plan, scale)
    with _loaded(load, other, other_options) as llm:
        side_b, answers_b = _side(llm, other, plan, scale)
    pairs = [PairedSurvey(q.topic, q.role, q.agent, q.persona_id, a, b) for q, a, b in zip(plan, answers_a, answers_b)]
    tolerance = INVARIANCE_TOLERANCE * scale.top / 10
    return InvarianceCheck(
        model=model, against=other, scale=scale.id, per_party=len(seatings), seed=seed, tolerance=tolerance,
        personas="bank" if bank is not None else f"generated on {model}", sides=dict(zip(SIDES, (side_a, side_b))),
        topics=[agreement(t.id, [p for p in pairs if p.topic == t.id], tolerance) for t in topics],
        overall=agreement("all", pairs, tolerance), surveys=pairs)
