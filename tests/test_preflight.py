"""check-model: do partisan personas separate on a model, before any debate? And the loud warning
run and reproduce give on a model whose recorded verdict says no."""

import json
import math

import pytest
from scipy import stats as sps

from debatelab.cli import main
from debatelab.llm.scripted import ScriptedLLM
from debatelab.preflight import MIN_GAP, check_topic, run_preflight
from debatelab.scales import PEW4, ZERO_TEN
from debatelab.topics import BUILTIN_TOPICS
from debatelab.types import SurveyAnswer
from debatelab import verdicts


def _party_model(rep: int, dem: int, default: int = 5) -> ScriptedLLM:
    """Answers by the party the background names (the persona meta-prompt names it)."""
    def value(request) -> int:
        system = request.prompt.messages[0].content
        return rep if "Republican" in system else dem if "Democrat" in system else default

    def reply(request):
        if request.prompt.assistant_prefix == "Rating: ":
            return str(value(request))
        name = request.prompt.messages[0].content.split(" for ")[1].split(",")[0]
        party = "Republican" if "Republican" in request.prompt.messages[0].content else "Democrat"
        return f"You are {name}, a {party} " + "who works and votes " * 10

    def scores(request):
        return [0.0 if i == value(request) else -math.inf for i in range(len(request.options))]

    return ScriptedLLM("party", reply_fn=reply, score_fn=scores)


def test_separating_model_role_plays_in_the_human_direction():
    pre = run_preflight(_party_model(2, 8), "party", list(BUILTIN_TOPICS.values()), per_party=4)
    by_topic = {t.topic: t for t in pre.topics}
    assert by_topic["gun_violence"].gap == -6 and by_topic["gun_violence"].role_plays
    # Pew: Republicans call illegal immigration a very big problem more often, so R < D is the wrong way
    assert by_topic["illegal_immigration"].separates and by_topic["illegal_immigration"].sign_matches is False
    assert not by_topic["illegal_immigration"].role_plays
    assert pre.verdict == "role-plays partisans on 3/4 topics"
    assert by_topic["racism"].n_republican == by_topic["racism"].n_democrat == 4
    assert by_topic["racism"].default == 5 and by_topic["racism"].option_mass == pytest.approx(1.0)


def test_one_agent_under_two_names_does_not():
    pre = run_preflight(_party_model(6, 6), "party", [BUILTIN_TOPICS["racism"]], per_party=3)
    assert pre.passed == [] and pre.verdict.startswith("does not role-play partisans (0/1 topics)")
    assert "measure noise" in pre.verdict and "under 1 point" in pre.topics[0].reading


def _answers(rep, dem):
    def answer(agent, v):
        return SurveyAnswer(iteration=0, agent_index=agent, method="both", score=round(v), valid=True,
                            expected_score=float(v))

    return [("republican", answer(0, v)) for v in rep] + [("democrat", answer(1, v)) for v in dem]


def test_gap_interval_is_welch_and_invalid_answers_are_left_out():
    rep, dem = [2, 3, 4, 3, 2], [6, 8, 7, 9]
    answers = _answers(rep, dem) + [("democrat", SurveyAnswer(iteration=0, agent_index=1, method="both",
                                                              score=None, valid=False))]
    check = check_topic(BUILTIN_TOPICS["gun_violence"], answers, ZERO_TEN, "greedy")
    ci = sps.ttest_ind(rep, dem, equal_var=False).confidence_interval(0.95)
    assert (check.gap_low, check.gap_high) == pytest.approx((ci.low, ci.high))
    assert check.gap == pytest.approx(sum(rep) / 5 - sum(dem) / 4) and check.invalid == 1
    assert check.n_democrat == 4 and check.role_plays


def test_a_wide_interval_does_not_separate_and_pew4_scales_the_threshold():
    check = check_topic(BUILTIN_TOPICS["racism"], _answers([0, 10, 0], [10, 0, 10]), ZERO_TEN, "greedy")
    assert abs(check.gap) >= MIN_GAP and not check.separates and "includes 0" in check.reading
    small = check_topic(BUILTIN_TOPICS["racism"], _answers([1, 1, 1], [1.4, 1.4, 1.4]), PEW4, "expected")
    assert small.separates  # 0.4 of Pew's 3 points is more than 1 of 10


def test_cli_writes_json_and_records_the_verdict_for_run(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["check-model", "scripted", "--per-party", "3", "--topics", "racism", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: does not role-play partisans" in printed and "racism" in printed
    record = json.loads(out.read_text())
    assert record["model"] == "scripted" and record["topics"][0]["topic"] == "racism"
    assert verdicts.recorded_verdict("scripted")["verdict"] == record["verdict"]
    config = tmp_path / "c.yaml"
    config.write_text("model: scripted\ntopics: [racism]\nagents: [republican, democrat]\nrounds: 1\n")
    verdicts._warned.clear()
    assert main(["run", str(config), "--out", str(tmp_path / "r1"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING: scripted does not role-play partisans on racism") == 1
    assert main(["run", str(config), "--out", str(tmp_path / "r2"), "--quiet"]) == 0
    assert "WARNING" not in capsys.readouterr().err  # once per process


def test_no_warning_without_a_verdict_or_on_passing_topics(tmp_path):
    assert verdicts.fidelity_warning("hf:nobody/never-checked", ["racism"]) is None
    path = verdicts.save_verdict({"model": "m", "verdict": "x", "topics": [{"topic": "racism", "role_plays": True}]})
    assert path.parent == verdicts.verdict_dir()
    assert verdicts.fidelity_warning("m", ["racism"]) is None
    path.write_text("{not json")
    assert verdicts.recorded_verdict("m") is None


def test_unknown_topic_is_one_line(capsys):
    assert main(["check-model", "scripted", "--topics", "pizza"]) == 2
    assert "unknown topic 'pizza'" in capsys.readouterr().err


def test_json_is_strict_and_survives_an_unwritable_cache(tmp_path, monkeypatch, capsys):
    out = tmp_path / "v.json"
    monkeypatch.setenv("DEBATELAB_VERDICTS", "/proc/no-such-folder")
    # one persona per party: no interval (NaN), written as null; the cache cannot be written
    assert main(["check-model", "opinion-sim", "--topics", "racism", "--per-party", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert record["topics"][0]["gap_low"] is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be recorded" in err


def test_near_constant_answers_warn_nothing(capsys):
    check_topic(BUILTIN_TOPICS["racism"], _answers([2.0, 2.0, 2.0000001], [8, 8, 8]), ZERO_TEN, "expected")
    assert capsys.readouterr().err == ""
