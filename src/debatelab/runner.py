"""The wave engine: every debate in flight advances one step per wave, in one batched call.

A wave gathers the next step of each active debate (a reply, or the survey of its agents),
sends all generation requests to the backend in one ``generate`` call and all option-scoring
requests in one ``score_options`` call, then commits the wave's results in one transaction.
When agents run on their own models (per-agent seats), a wave makes those two calls once per
model, each with every request that model serves; models that are views of one loaded engine
(``shares_engine``, e.g. vLLM adapters) share one ``generate_mixed`` / ``score_options_mixed`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

from . import prompts, survey
from .config import ExperimentConfig
from .debate import Reply, Step, Survey, derive_seed, next_step, schedule
from .llm.base import LLM, Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, prompt_sha
from .scales import Scale
from .types import DebateSpec, SurveyAnswer, Turn


@dataclass
class LiveDebate:
    spec: DebateSpec
    turns: list[Turn]
    surveys_done: set[tuple[int, int]]
    steps: list[Step] = field(init=False)

    def __post_init__(self) -> None:
        self.steps = schedule(len(self.spec.agents), self.spec.rounds, self.spec.first_speaker, self.spec.kind)

    def next(self) -> Step | None:
        return next_step(self.steps, (t.iteration for t in self.turns), self.surveys_done)


SurveyKey = tuple[str, int, int]  # debate_id, iteration, agent_index
ShaKey = tuple[str, str, int, int]  # "reply" | "survey", debate_id, iteration, agent_index


@dataclass
class _Pending:
    """Which debate (and which step of it) each request in a wave belongs to."""

    generate: list[tuple[LiveDebate, int, int, str]] = field(default_factory=list)  # debate, iter, agent, kind
    gen_requests: list[GenerateRequest] = field(default_factory=list)
    score: list[tuple[LiveDebate, int, int]] = field(default_factory=list)
    score_requests: list[ScoreRequest] = field(default_factory=list)
    shas: dict[ShaKey, str] = field(default_factory=dict)
    """The prompt hash of each reply and survey, taken as its request is built."""




@dataclass(frozen=True)
class Wave:
    """One committed wave: exactly what the runner handed its sink's ``add_results`` in one call."""

    turns: list[tuple[str, Turn]]
    """(debate_id, turn) of every reply the wave produced."""
    surveys: list[tuple[str, SurveyAnswer]]
    """(debate_id, answer) of every survey answer the wave produced."""
    finished: list[str]
    """Debates whose last step this wave was."""
    failed: list[tuple[str, int, str]]
    """(debate_id, iteration, first error) of debates whose request failed; their step is dropped."""


@dataclass
class _WaveResult:
    turns: list[tuple[str, Turn]] = field(default_factory=list)
    greedy: dict[SurveyKey, Completion] = field(default_factory=dict)
    dists: dict[SurveyKey, OptionScores] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # debate_id -> first error
    shas: dict[ShaKey, str] = field(default_factory=dict)

    def surveys(self, scale: Scale) -> list[tuple[str, SurveyAnswer]]:
        """The wave's survey answers, each from its greedy answer and/or distribution (whichever
        the survey method asked for) and with its prompt hash; none for a debate with a failed
        request (its whole step is dropped, so no survey is half-stored)."""
        return [(key[0], survey.answer(key[1], key[2], self.greedy.get(key), self.dists.get(key), scale)
                 .model_copy(update={"prompt_sha": self.shas.get(("survey", *key))}))
                for key in dict.fromkeys([*self.greedy, *self.dists]) if key[0] not in self.failed]


class ResultSink(Protocol):
    """Where a runner reads progress and writes each wave: the run's SQLite store; on a Ray
    worker, a sink that only knows the progress it was sent (the worker streams each
    :class:`Wave` back to the driver, the run's single writer); an in-memory one for estimates."""

    def status(self, debate_id: str) -> str: ...

    def progress(self, debate_id: str) -> tuple[list[Turn], set[tuple[int, int]]]: ...

    def mark_running(self, debate_ids: Iterable[str]) -> None: ...

    def add_results(self, turns: list[tuple[str, Turn]], surveys: list[tuple[str, SurveyAnswer]],
                    finished: list[str], failed: Iterable[tuple[str, int, str]] = ()) -> None: ...


class WaveRunner:
    """Runs debates in waves on its backends (``llm``, and ``seat_llms`` per agent model key),
    committing every wave to ``store`` before yielding it."""

    def __init__(self, llm: LLM, store: ResultSink, config: ExperimentConfig,
                 seat_llms: Mapping[str, LLM] | None = None):
        self.llms: dict[str, LLM] = {"": llm, **(seat_llms or {})}
        self.store = store
        self.config = config
        self.contrastive = {key: seat.contrastive for key, seat in config.seat_methods().items()
                            if seat.contrastive is not None}
        """Model key -> its persona-contrastive decoding: its requests carry the prompt without the persona."""

    def run(self, specs: Sequence[DebateSpec]) -> None:
        for _ in self.waves(specs):
            pass

    def waves(self, specs: Sequence[DebateSpec]) -> Iterator[Wave]:
        """Run every unfinished debate of ``specs``, yielding each wave once it is committed."""
        queue = [s for s in reversed(specs) if self.store.status(s.debate_id) != "complete"]
        active: list[LiveDebate] = []
        while queue or active:
            admitted = self._admit(queue, len(active))
            if admitted:  # each debate is marked once, when it enters, not on every wave
                self.store.mark_running(d.spec.debate_id for d in admitted)
                active += admitted
            wave, active = self._wave(active)
            yield wave

    def _admit(self, queue: list[DebateSpec], in_flight: int) -> list[LiveDebate]:
        """The debates that enter this wave, taken from the end of ``queue``. ``together`` fills
        every free place at once, so debates begun together step in lockstep and finish together;
        ``staggered`` lets in at most max_in_flight / (steps of a debate) per wave, so the debates
        in flight are spread over every stage of a debate: each wave carries replies and surveys
        alike, a finished debate's place is taken a wave later, and the prompts held in memory
        (which grow with the history) average half a debate instead of all peaking at once."""
        room, admitted = self.config.max_in_flight - in_flight, []
        while queue and len(admitted) < room:
            spec = queue.pop()
            turns, surveys = self.store.progress(spec.debate_id)
            admitted.append(LiveDebate(spec, turns, surveys))
            share = math.ceil(self.config.max_in_flight / len(admitted[-1].steps))
            if self.config.admission == "staggered" and len(admitted) >= share:
                break
        return admitted

    def _wave(self, active: list[LiveDebate]) -> tuple[Wave, list[LiveDebate]]:
        """Advance every debate in ``active`` one step and commit; the wave and the debates still going."""
        pending: dict[str, _Pending] = {}
        for debate in active:
            step = debate.next()
            if isinstance(step, Reply):
                self._add_reply(pending, debate, step)
            elif isinstance(step, Survey):
                self._add_survey(pending, debate, step)
        result = _WaveResult()
        for bucket in pending.values():
            result.shas.update(bucket.shas)
        for keys in self._engine_groups(pending):
            self._call([(self.llms[k], pending[k]) for k in keys], result)
        # A debate with a failed request drops its whole step, so a survey is never half-stored.
        turns = [(d, t) for d, t in result.turns if d not in result.failed]
        surveys = result.surveys(self.config.survey.scale_spec)
        by_id = {d.spec.debate_id: d for d in active}
        for debate_id, turn in turns:
            by_id[debate_id].turns.append(turn)
        for debate_id, answer in surveys:
            by_id[debate_id].surveys_done.add((answer.iteration, answer.agent_index))
        finished = [d for d in active if d.spec.debate_id not in result.failed and d.next() is None]
        failed = [(d, by_id[d].next().iteration, error) for d, error in result.failed.items()]
        wave = Wave(turns, surveys, [d.spec.debate_id for d in finished], failed)
        self.store.add_results(wave.turns, wave.surveys, wave.finished, wave.failed)
        self._release(pending, set(wave.finished))
        done = set(wave.finished) | set(result.failed)  # ids: comparing LiveDebates would be quadratic
        return wave, [d for d in active if d.spec.debate_id not in done]

    def _release(self, pending: Mapping[str, _Pending], finished: set[str]) -> None:
        """Tell each model of the wave which debates finished: no later prompt extends a debate's
        own history, so a prompt cache may free what they left at once. Society units are left
        alone (an agent's next unit may begin where its last one ended)."""
        if not finished:
            return
        for key, bucket in pending.items():
            owners = [o[0] for o in bucket.generate] + [o[0] for o in bucket.score]
            done = sorted({d.spec.debate_id for d in owners if d.spec.debate_id in finished and d.spec.kind == "debate"})
            if done:
                self.llms[key].release(done)

    def _engine_groups(self, pending: Mapping[str, _Pending]) -> list[list[str]]:
        """The wave's model keys, in bucket order, grouped so that keys whose backends share one
        loaded engine (adapter views of it) go out together; every other key is a group of one.
        Backends of no shared engine are asked first, then each engine (the order of earlier
        releases: with a debate failing on two models, the first error is the one recorded)."""
        groups: list[list[str]] = []
        for key in pending:
            group = next((g for g in groups if self.llms[g[0]].shares_engine(self.llms[key])), None)
            if group is None:
                groups.append([key])
            else:
                group.append(key)
        return sorted(groups, key=lambda g: self.llms[g[0]].shares_engine(self.llms[g[0]]))

    def _add_reply(self, pending: dict[str, _Pending], debate: LiveDebate, step: Reply) -> None:
        spec = debate.spec
        reply, model = self.config.reply, spec.agents[step.agent].model
        if spec.kind == "summary":  # a society agent's note on its encounter: stored, seeded, T=0
            prompt = prompts.summary_prompt(spec.agents, step.agent, spec.topic, spec.history)
            temperature, top_p = 0.0, 1.0
        else:
            prompt = prompts.reply_prompt(spec.agents, step.agent, spec.topic, debate.turns)
            temperature, top_p = reply.temperature, reply.top_p
        method = self.contrastive.get(model)
        contrast = (prompts.reply_prompt(prompts.without_persona(spec.agents, step.agent), step.agent, spec.topic,
                                         debate.turns) if method is not None and method.replies else None)
        bucket = pending.setdefault(model, _Pending())
        bucket.generate.append((debate, step.iteration, step.agent, "reply"))
        sha = self.llms[model].conditioning(prompt, "generate").sha()
        bucket.shas[("reply", spec.debate_id, step.iteration, step.agent)] = sha
        bucket.gen_requests.append(GenerateRequest(
            prompt, temperature=temperature, max_tokens=reply.max_tokens, top_p=top_p,
            stop=prompts.reply_stops(spec.agents), seed=derive_seed(spec.seed, "reply", step.iteration),
            contrast=contrast, group=spec.debate_id,
        ))

    def _add_survey(self, pending: dict[str, _Pending], debate: LiveDebate, step: Survey) -> None:
        spec, scale = debate.spec, self.config.survey.scale_spec
        for agent in step.agents:
            prompt = prompts.survey_prompt(spec.agents, agent, spec.topic, debate.turns, scale)
            seed = derive_seed(spec.seed, "survey", step.iteration, agent)
            model = spec.agents[agent].model
            method = self.contrastive.get(model)
            contrast = (prompts.survey_prompt(prompts.without_persona(spec.agents, agent), agent, spec.topic,
                                              debate.turns, scale) if method is not None and method.surveys else None)
            bucket = pending.setdefault(model, _Pending())
            bucket.shas[("survey", spec.debate_id, step.iteration, agent)] = self._survey_sha(self.llms[model], prompt)
            if self.config.survey.records_distribution:
                bucket.score.append((debate, step.iteration, agent))
                bucket.score_requests.append(ScoreRequest(prompt, scale.options, seed=seed, contrast=contrast,
                                                         group=spec.debate_id))
            if self.config.survey.records_greedy:  # the paper's measure: the answer at T=0
                bucket.generate.append((debate, step.iteration, agent, "survey"))
                bucket.gen_requests.append(GenerateRequest(
                    prompt, temperature=0.0, max_tokens=self.config.survey.max_tokens, seed=seed, contrast=contrast,
                    group=spec.debate_id))

    def _survey_sha(self, llm: LLM, prompt: Prompt) -> str:
        """The hash of what a survey sends: the greedy request's text, then the scoring request's
        (one hash when they are the same text, as on most backends)."""
        texts: list[str] = []
        if self.config.survey.records_greedy:
            texts.append(llm.conditioning(prompt, "generate").text)
        if self.config.survey.records_distribution:
            texts.append(llm.conditioning(prompt, "score").text)
        return prompt_sha(*texts)

    @staticmethod
    def _call(parts: list[tuple[LLM, _Pending]], result: _WaveResult) -> None:
        """One generate and one score call for a group of models: a group of one asks its backend;
        views of one engine are asked together through the first view, each part answered apart."""
        leader, alone = parts[0][0], len(parts) == 1
        gen = [(llm, p) for llm, p in parts if p.gen_requests]
        if gen:
            outs = ([leader.generate(gen[0][1].gen_requests)] if alone
                    else leader.generate_mixed([(llm, p.gen_requests) for llm, p in gen]))
            for (_, p), completions in zip(gen, outs):
                _record_generated(p.generate, completions, result)
        score = [(llm, p) for llm, p in parts if p.score_requests]
        if score:
            scores = ([leader.score_options(score[0][1].score_requests)] if alone
                      else leader.score_options_mixed([(llm, p.score_requests) for llm, p in score]))
            for (_, p), option_scores in zip(score, scores):
                _record_scored(p.score, option_scores, result)


def _record_generated(owners: list[tuple[LiveDebate, int, int, str]], outs: Sequence[Completion],
                      result: _WaveResult) -> None:
    for (debate, iteration, agent, kind), out in zip(owners, outs):
        debate_id = debate.spec.debate_id
        if out.error is not None:
            result.failed.setdefault(debate_id, out.error)
        elif kind == "reply":
            text = prompts.clean_reply(out.text, [a.name for a in debate.spec.agents])
            result.turns.append((debate_id, Turn(
                iteration=iteration, agent_index=agent, text=text, prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens, finish_reason=out.finish_reason,
                prompt_sha=result.shas.get(("reply", debate_id, iteration, agent)))))
        else:
            result.greedy[(debate_id, iteration, agent)] = out


def _record_scored(owners: list[tuple[LiveDebate, int, int]], scores: Sequence[OptionScores],
                   result: _WaveResult) -> None:
    for (debate, iteration, agent), sc in zip(owners, scores):
        if sc.error is not None:
            result.failed.setdefault(debate.spec.debate_id, sc.error)
        else:
            result.dists[(debate.spec.debate_id, iteration, agent)] = sc
