"""Behaviour, not only surveys: a judge model reads each reply and rates the speaker's stance
on the topic's 0-10 scale (``debatelab score-stance RUN --judge MODEL``).

The judge sees the topic and the one utterance (:func:`debatelab.prompts.judge_prompt`), never the
speaker's persona, the rest of the debate or its surveys, so its reading measures what was said.
It answers as a survey is answered: the greedy T=0 answer, parsed by the survey's rules, and/or
the distribution over 0..10 from the same prompt. Scores are committed to the run database per
batch, so an interrupted scoring resumes where it stopped; ``stances.csv`` is rewritten after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

from . import survey
from .debate import derive_seed
from .export import export_stances
from .llm.base import LLM, GenerateRequest, ScoreRequest
from .prompts import judge_prompt
from .scales import ZERO_TEN
from .store import (DB_NAME, ReplyToJudge, add_stances, bind_judge, judged_count, open_store, read_run_database,
                    unscored_replies)
from .topics import Topic
from .types import SurveyAnswer

Method = Literal["both", "generate", "logprobs"]
JUDGE_MAX_TOKENS = 8


@dataclass(frozen=True)
class StanceSummary:
    run_dir: Path
    judge: str
    scored: int
    """Replies scored by this call."""
    total: int
    """Replies of the run the judge has scored, this call's included."""
    invalid: int
    """Of this call's, answers that stated no score (recorded as invalid)."""
    failed: int
    """Of this call's, requests that failed for good (not stored; the next call retries them)."""


def score_stances(run_dir: Path, judge: str, llm: LLM, method: Method = "both", batch_size: int = 64,
                  on_batch: Callable[[int], None] | None = None) -> StanceSummary:
    """Score every reply of ``run_dir`` that ``judge`` has not scored, ``batch_size`` at a time,
    each batch committed before the next is asked."""
    read_run_database(run_dir / DB_NAME).close()  # one line for a missing or foreign database
    store = open_store(run_dir)  # the run's lock: never while the run itself writes
    try:
        bind_judge(store, judge, json.dumps(llm.identity(), sort_keys=True, default=str))
        todo = unscored_replies(store, judge)
        scored = invalid = failed = 0
        for start in range(0, len(todo), batch_size):
            answers, errors = judge_batch(llm, todo[start:start + batch_size], method)
            add_stances(store, judge, answers)
            scored, failed = scored + len(answers), failed + errors
            invalid += sum(not answer.valid for _, _, answer in answers)
            if on_batch is not None:
                on_batch(len(answers) + errors)
        total = judged_count(store, judge)
        export_stances(store, run_dir)
    finally:
        store.close()
    return StanceSummary(run_dir, judge, scored, total, invalid, failed)


def judge_batch(llm: LLM, replies: Sequence[ReplyToJudge], method: Method) -> tuple[list[tuple[str, int, SurveyAnswer]], int]:
    """The judge's answers to one batch, as (debate_id, iteration, answer), and how many failed."""
    prompts = [judge_prompt(Topic.model_validate_json(r.topic_json), r.text) for r in replies]
    seeds = [derive_seed("stance", r.debate_id, r.iteration) for r in replies]
    greedy = (llm.generate([GenerateRequest(p, temperature=0.0, max_tokens=JUDGE_MAX_TOKENS, seed=s)
                            for p, s in zip(prompts, seeds)]) if method != "logprobs" else [None] * len(replies))
    dists = (llm.score_options([ScoreRequest(p, ZERO_TEN.options, seed=s) for p, s in zip(prompts, seeds)])
             if method != "generate" else [None] * len(replies))
    out, failed = [], 0
    for reply, completion, scores in zip(replies, greedy, dists):
        if (completion is not None and completion.error) or (scores is not None and scores.error):
            failed += 1  # not stored: the next scoring asks again
            continue
        out.append((reply.debate_id, reply.iteration, survey.answer(reply.iteration, 0, completion, scores)))
    return out, failed


