"""Do two backends (e.g. the same model in float32 and bfloat16) give the same survey distributions?

Each survey's 11 option log-probabilities are renormalised over 0..10 (as the survey stores them)
and compared per prompt: total-variation distance of the distributions and the absolute difference
of their expected scores. Two backends agree when, averaged over the prompts, the distance is
below ``TV_TOLERANCE`` and the expected-score difference below ``EXPECTED_TOLERANCE`` (0.1 on the
0-10 scale, a tenth of the smallest step a survey can report).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..llm.base import LLM, OptionScores, ScoreRequest
from ..survey import normalise

TV_TOLERANCE = 0.05
EXPECTED_TOLERANCE = 0.1


def distribution_gap(a: Sequence[OptionScores], b: Sequence[OptionScores]) -> dict[str, Any]:
    """Per-prompt gaps between two scorings of the same requests, summarised."""
    tvs, diffs, same_argmax = [], [], 0
    for x, y in zip(a, b, strict=True):
        p, q = normalise(x.logprobs), normalise(y.logprobs)
        if p is None or q is None:
            raise ValueError("a scoring returned no finite log-probabilities")
        tvs.append(0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q)))
        diffs.append(abs(_expected(p) - _expected(q)))
        same_argmax += _argmax(p) == _argmax(q)
    n = len(tvs)
    return {
        "prompts": n, "mean_tv": sum(tvs) / n, "max_tv": max(tvs),
        "mean_abs_diff_expected": sum(diffs) / n, "max_abs_diff_expected": max(diffs),
        "argmax_agree": same_argmax / n,
    }


def within_tolerance(gap: dict[str, Any], tv: float = TV_TOLERANCE, expected: float = EXPECTED_TOLERANCE) -> bool:
    return gap["mean_tv"] < tv and gap["mean_abs_diff_expected"] < expected


def compare_backends(reference: LLM, other: LLM, requests: Sequence[ScoreRequest]) -> dict[str, Any]:
    """Score ``requests`` (one batched call each) on both backends: gaps, verdict and timings."""
    timed = []
    for llm in (reference, other):
        with llm.without_cache():  # both in full: the reference may hold these prompts already
            start = time.perf_counter()
            timed.append((llm.score_options(list(requests)), time.perf_counter() - start))
    gap = distribution_gap(timed[0][0], timed[1][0])
    return {
        **gap, "within_tolerance": within_tolerance(gap),
        "tolerance": {"mean_tv": TV_TOLERANCE, "mean_abs_diff_expected": EXPECTED_TOLERANCE},
        "reference_s_per_survey": timed[0][1] / len(requests), "other_s_per_survey": timed[1][1] / len(requests),
        "reference": reference.identity(), "other": other.identity(),
    }


def _expected(p: list[float]) -> float:
    return sum(i * pi for i, pi in enumerate(p))


def _argmax(p: list[float]) -> int:
    return max(range(len(p)), key=p.__getitem__)
