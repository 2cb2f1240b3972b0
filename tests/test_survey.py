import math

import numpy as np
import pytest

from debatelab.llm.base import Completion, OptionScores
from debatelab.survey import from_generation, from_option_scores, normalise, parse_rating


@pytest.mark.parametrize("text, expected", [
    ("7", 7), ("10.", 10), ("7/10", 7), ("7 / 10", 7), ("Seven", 7), ("I'd say 8 out of 10", 8),
    ("0 - not a problem", 0), ("  3\nbecause 5 reasons", 3), ("ten", 10),
    ("", None), ("6 or 7", None), ("11", None), ("-1", None), ("7.5", None), ("a big problem", None),
    ("between 4 and 6", None), ("No one knows.", None), ("A big one.", None), ("#1 issue", None),
    ("7th", None), ("It is one of the worst problems", None), ("Seven.", 7), ("seven out of ten", 7),
    ("Eight/10", 8), ("8 out of ten", 8), ("8, maybe one day 9", None), ("10/10", 10),
])
def test_parse_rating_rules(text, expected):
    assert parse_rating(text) == expected


def test_generation_answer_records_invalid_without_guessing():
    answer = from_generation(3, 1, Completion("somewhere around 6 or 7"))
    assert answer.valid is False and answer.score is None and answer.raw == "somewhere around 6 or 7"
    assert from_generation(0, 0, Completion("8")).score == 8


def test_option_scores_distribution_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=11) - 3
    answer = from_option_scores(0, 0, OptionScores(tuple(logits)))
    probs = np.exp(logits) / np.exp(logits).sum()
    assert answer.probs == pytest.approx(probs.tolist())
    assert answer.expected_score == pytest.approx(float((np.arange(11) * probs).sum()))
    assert answer.score == int(np.argmax(probs))
    assert answer.option_mass == pytest.approx(float(np.exp(logits).sum()))


def test_option_scores_all_missing_is_invalid():
    answer = from_option_scores(0, 0, OptionScores((-math.inf,) * 11, source="generated", text="hmm"))
    assert not answer.valid and answer.score is None and answer.expected_score is None


def test_normalise_ignores_missing_options():
    assert normalise([0.0, -math.inf, 0.0]) == [0.5, 0.0, 0.5]
    assert normalise([-math.inf]) is None
