"""Pew's 4-point item as a survey scale: the prompt humans answered, the parser, storage,
exports and analysis, and that the paper's 0-10 runs keep their ids and fingerprints."""

import csv
import math

import pytest
import yaml

import debatelab
from debatelab.config import ExperimentConfig, load_config
from debatelab.experiment import run_experiment
from debatelab.llm.base import Completion, OptionScores
from debatelab.prompts import PEW4_PREFIX, survey_prompt
from debatelab.scales import PEW4, ZERO_TEN, scale_of
from debatelab.survey import from_both, parse_answer, parse_pew4
from debatelab.topics import BUILTIN_TOPICS
from debatelab.types import DEFAULT_CONTEXT, Agent

PEW4_CATALOGUE = [
    ("A", 3), ("B", 2), ("C", 1), ("D", 0), ("B.", 2), ("(C)", 1), (" D) Not a problem at all", 0),
    ("A very big problem", 3), ("A moderately big problem", 2), ("A small problem", 1), ("Not a problem at all", 0),
    ("a very big problem.", 3), ("Very big", 3), ("**B**", 2), ("B: a moderately big problem", 2),
    ("A. A very big problem", 3), ("<b>C</b>", 1), ("A\nB", 3),
    # invalid: none, two answers, letter and words that disagree, other letters, a bare article
    ("", None), ("E", None), ("AB", None), ("A or B", None), ("B. A very big problem", None),
    ("small or very big", None), ("I am not sure", None), ("7", None), ("A problem", None),
    ("Not a very big problem", None), ("not small", None), ("B, not really", None),
]


@pytest.mark.parametrize("text, expected", PEW4_CATALOGUE)
def test_parse_pew4_catalogue(text, expected):
    assert parse_pew4(text) == expected
    assert parse_answer(text, PEW4) == expected


def test_parse_answer_keeps_the_paper_scale():
    assert parse_answer("7", ZERO_TEN) == 7 and parse_answer("A", ZERO_TEN) is None


def test_pew4_prompt_asks_pews_question_in_pews_order():
    agents = (Agent(name="Ann", role="republican", background="You are Ann."),
              Agent(name="Tom", role="default", background=DEFAULT_CONTEXT))
    prompt = survey_prompt(agents, 0, BUILTIN_TOPICS["gun_violence"], (), PEW4)
    text = prompt.messages[-1].content
    assert "How much of a problem do you think gun violence is in the country today?" in text
    lines = [line for line in text.splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
    assert lines == ["A. A very big problem", "B. A moderately big problem", "C. A small problem",
                     "D. Not a problem at all"]
    assert prompt.assistant_prefix == PEW4_PREFIX and prompt.messages[0].content == "You are Ann."


def test_scale_options_are_in_score_order():
    # stored distributions are indexed by score on either scale: the letter of score 3 is A
    assert PEW4.options[3] == "A" and PEW4.labels[3] == "a very big problem" and PEW4.midpoint == 1.5
    assert ZERO_TEN.options == tuple(str(i) for i in range(11)) and ZERO_TEN.top == 10


def test_from_both_on_pew4():
    logprobs = tuple(math.log(p) for p in (0.1, 0.2, 0.3, 0.4))
    answer = from_both(0, 1, Completion("B"), OptionScores(logprobs), PEW4)
    assert answer.score == 2 and answer.valid
    assert answer.expected_score == pytest.approx(0.2 + 0.6 + 1.2)
    assert answer.probs == pytest.approx((0.1, 0.2, 0.3, 0.4))


def _config(tmp_path, **survey):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "scripted", "topics": ["gun_violence", "racism"],
                                    "agents": ["republican", "democrat"], "rounds": 2, "repetitions": 2,
                                    "survey": survey}))
    return load_config(path)


def test_default_scale_leaves_ids_and_fingerprints_alone(tmp_path):
    plain, explicit = _config(tmp_path), _config(tmp_path, scale="0-10")
    assert plain.fingerprint() == explicit.fingerprint()
    assert "scale" not in plain.survey.identity()
    assert _config(tmp_path, scale="pew4").fingerprint() != plain.fingerprint()


def test_unknown_scale_is_one_line(tmp_path):
    with pytest.raises(debatelab.DebatelabError, match="scale"):
        _config(tmp_path, scale="pew5")


def test_pew4_run_end_to_end(tmp_path):
    config = _config(tmp_path, scale="pew4")
    summary = run_experiment(config, tmp_path / "run")
    assert summary.complete == 4 and summary.invalid_surveys == 0
    with open(tmp_path / "run" / "attitudes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["score"] in "0123" and r["raw"] in "ABCD" for r in rows)
    assert all(r["p4"] == "" and r["p10"] == "" and r["p3"] != "" for r in rows)
    for r in rows:  # the greedy letter is the stored score's letter, the distribution sums to 1
        assert PEW4.options[int(r["score"])] == r["raw"]
        assert sum(float(r[f"p{i}"]) for i in range(4)) == pytest.approx(1.0)
    run = debatelab.load(tmp_path / "run")
    assert run.scale is PEW4 and run.surveys["value"].between(0, 3).all()
    assert all(len(p) == 4 for p in run.surveys["probs"])


def test_scale_of_old_runs_is_zero_ten():
    assert scale_of({"survey": {"method": "both"}}) is ZERO_TEN and scale_of({}) is ZERO_TEN
    assert scale_of(ExperimentConfig(topics=["racism"], agents=["republican", "democrat"],
                                     survey={"scale": "pew4"}).model_dump()) is PEW4


def test_low_mass_warning_names_the_scales_answers():
    from debatelab.analysis.show import low_mass_warning

    assert "bare number 0..10 ending" in low_mass_warning(0.1)
    pew = low_mass_warning(0.1, "pew4")
    assert "bare letter A-D" in pew and "after the letter" in pew and "0..10" not in pew
