import math

import numpy as np
import pytest

from debatelab.llm.base import Completion, OptionScores
from debatelab.survey import from_both, from_generation, from_option_scores, normalise, parse_rating


# Every answer form the survey parser has an opinion on, with the outcome the rules in
# debatelab/survey.py's docstring give (None = recorded invalid). The rule each row shows is noted.
CATALOGUE = [
    # a plain rating, with the scale, or in words (rule 4)
    ("0", 0), ("7", 7), ("  9  ", 9), ("10.", 10), ("7/10", 7), ("7 / 10", 7), ("10/10", 10),
    ("I'd say 8 out of 10", 8), ("8 out of ten", 8), ("Eight/10", 8), ("Rating: 7", 7), ("**8**", 8),
    ("I'd rate it a 3.", 3), ("0 - not a problem", 0), ("(7)", 7), ("I'd say (7)", 7),
    ("Seven", 7), ("Seven.", 7), ("ten", 10), ("seven out of ten", 7),
    # only the first line counts (rule 1)
    ("8\nbut 9 later", 8), ("  3\nbecause 5 reasons", 3), ("\n\n6\n", 6), ("No idea.\n7", None),
    # fullwidth forms are ASCII; other scripts' digits, superscripts, circled digits are not (rule 2)
    ("７", 7), ("７／１０", 7), ("Ｒａｔｉｎｇ：　７", 7), ("٧", None), ("⁷", None), ("①", None),
    ("① 7", 7), ("−1", None),
    # markup and code hold no rating; text between tags does (rule 3)
    ("<script>alert(1)</script>", None), ("<h1>", None), ("f(7)", None), ("f(g(7))", None),
    ("console.log(7)", None), ("x[3]", None), ("7(ish)", None), ("alert(1", None),
    ("<script>var x = 7</script>", None), ("<style>h1{font-size:7px}</style>", None),
    ("<b>7</b>", 7), ("<p>Seven</p>", 7), ("<!-- 3 --> 7", 7), ("<h2>Rating</h2> 6", 6),
    # no number, a word that is no rating, or a number that is part of a word (rule 4)
    ("", None), ("   ", None), ("N/A", None), ("A big one.", None), ("a big problem", None),
    ("No one knows.", None), ("It is one of the worst problems", None), ("7th", None), ("#1 issue", None),
    # not exactly one number (rule 5)
    ("6 or 7", None), ("3-4", None), ("between 4 and 5", None), ("between 4 and 6", None),
    ("5 out of 10, maybe 6", None), ("8, maybe one day 9", None),
    # outside 0..10 or not an integer (rule 5)
    ("11", None), ("-1", None), ("7.5", None),
]


@pytest.mark.parametrize("text, expected", CATALOGUE)
def test_parse_rating_catalogue(text, expected):
    assert parse_rating(text) == expected


def test_catalogue_covers_issue_5_examples():
    """The answers issue 5 asks about are all in the catalogue (so none silently drops out)."""
    asked = ["7/10", "Seven", "6 or 7", "I'd say 8 out of 10", "", "11", "-1", "7.5", "10.", "seven out of ten",
             "7th", "A big one.", "Rating: 7", "**8**", "8\nbut 9 later", "<script>alert(1)</script>", "0",
             "10/10", "5 out of 10, maybe 6", "N/A", "  9  ", "７", "I'd rate it a 3.", "3-4", "between 4 and 5"]
    answers = [text for text, _ in CATALOGUE]
    assert [a for a in asked if a not in answers] == []
    assert len(set(answers)) == len(answers)


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


def test_both_keeps_the_greedy_answer_as_score_and_the_distribution_beside_it():
    logits = np.log(np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 20, 1], dtype=float) / 30)
    answer = from_both(2, 1, Completion("6"), OptionScores(tuple(logits)))
    probs = np.exp(logits) / np.exp(logits).sum()
    assert answer.method == "both" and answer.score == 6 and answer.valid and answer.raw == "6"
    assert answer.expected_score == pytest.approx(float((np.arange(11) * probs).sum()))  # not 6: the two differ
    assert answer.source == "logprobs" and answer.option_mass == pytest.approx(1.0)


def test_both_records_an_unparseable_greedy_answer_as_invalid_but_keeps_the_distribution():
    answer = from_both(0, 0, Completion("I would say six or seven"), OptionScores((0.0,) + (-math.inf,) * 10))
    assert not answer.valid and answer.score is None and answer.raw == "I would say six or seven"
    assert answer.expected_score == 0.0 and answer.probs[0] == 1.0


def test_both_marks_a_distribution_parsed_from_text_as_a_fallback():
    scores = OptionScores((-math.inf,) * 7 + (0.0,) + (-math.inf,) * 3, source="generated", text="7")
    answer = from_both(0, 0, Completion("7"), scores)
    assert answer.source == "generated" and answer.option_mass is None and answer.score == 7


def test_top_k_option_mass_is_the_mass_seen() -> None:
    lps = (math.log(0.5), math.log(0.2)) + (-math.inf,) * 9
    answer = from_option_scores(0, 0, OptionScores(lps, source="top_k"))
    assert answer.source == "top_k" and answer.option_mass == pytest.approx(0.7) and answer.score == 0
