"""score-stance: a judge reads every reply (topic and utterance only), resumably, beside the turns."""

import csv

import pytest
import yaml

import debatelab
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.llm.base import Completion
from debatelab.llm.scripted import ScriptedLLM
from debatelab.prompts import JUDGE_PREFIX
from debatelab.stance import score_stances

ROUNDS, AGENTS, REPS = 2, 3, 2


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "scripted", "topics": ["gun_violence"], "rounds": ROUNDS,
                                    "agents": ["republican", "democrat", "default"], "repetitions": REPS}))
    run_experiment(load_config(path), tmp_path / "run")
    return tmp_path / "run"


REPLIES = ROUNDS * AGENTS * REPS


def _judge(text: str = "7") -> ScriptedLLM:
    return ScriptedLLM("judge", reply_fn=lambda request: text)


def test_judge_sees_topic_and_utterance_only(run_dir):
    judge = _judge()
    summary = score_stances(run_dir, "judge", judge)
    assert summary.scored == summary.total == REPLIES and summary.invalid == 0
    turns = {row["text"] for row in csv.DictReader(open(run_dir / "turns.csv", newline=""))}
    prompts = [r.prompt for batch in judge.generate_calls for r in batch]
    assert len(prompts) == REPLIES
    for prompt in prompts:
        assert [m.role for m in prompt.messages] == ["user"] and prompt.assistant_prefix == JUDGE_PREFIX
        text = prompt.messages[0].content
        assert "gun violence" in text
        assert sum(t in text for t in turns) == 1  # its own reply, none of the others
        assert "You are" not in text and "Rating:" not in text  # no persona, no survey
    assert all(r.temperature == 0.0 for batch in judge.generate_calls for r in batch)
    assert [len(b) for b in judge.score_calls] and all(r.options == tuple(map(str, range(11)))
                                                        for b in judge.score_calls for r in b)


def test_stances_csv_and_frames(run_dir):
    score_stances(run_dir, "judge", _judge("8"))
    rows = list(csv.DictReader(open(run_dir / "stances.csv", newline="")))
    assert len(rows) == REPLIES and {r["judge"] for r in rows} == {"judge"}
    assert all(r["score"] == "8" and r["valid"] == "True" and r["method"] == "both" for r in rows)
    run = debatelab.load(run_dir)
    assert len(run.stances) == REPLIES and (run.stances["value"] == 8).all()
    assert set(run.stances["role"]) == {"republican", "democrat", "default"}
    assert sorted(run.stances["iteration"].unique()) == list(range(1, ROUNDS * AGENTS + 1))


class _Stop(Exception):
    pass


def test_interrupted_scoring_resumes_without_duplicates(run_dir):
    calls = []

    def flaky(request):
        calls.append(request)
        if len(calls) > 5:  # dies inside the second batch of 5
            raise _Stop
        return "6"

    with pytest.raises(_Stop):
        score_stances(run_dir, "judge", ScriptedLLM("judge", reply_fn=flaky), batch_size=5)
    assert len(debatelab.load(run_dir).stances) == 5  # the first batch was committed
    again = _judge("6")
    summary = score_stances(run_dir, "judge", again, batch_size=5)
    assert summary.scored == REPLIES - 5 and summary.total == REPLIES
    assert sum(len(b) for b in again.generate_calls) == REPLIES - 5
    stances = debatelab.load(run_dir).stances
    assert len(stances) == REPLIES and not stances.duplicated(["debate_id", "iteration", "judge"]).any()


def test_failed_requests_are_not_stored_and_retried(run_dir):
    class Failing(ScriptedLLM):
        def generate(self, requests):
            return [Completion("", error="HTTP 500") if i % 2 else c
                    for i, c in enumerate(super().generate(requests))]

    summary = score_stances(run_dir, "judge", Failing("judge", reply_fn=lambda r: "5"))
    assert summary.failed == REPLIES // 2 and summary.total == REPLIES - REPLIES // 2
    assert score_stances(run_dir, "judge", _judge("5")).scored == REPLIES // 2


def test_two_judges_and_a_changed_identity(run_dir):
    score_stances(run_dir, "judge", _judge("3"))
    score_stances(run_dir, "other", ScriptedLLM("other", reply_fn=lambda r: "9"))
    stances = debatelab.load(run_dir).stances
    assert stances.groupby("judge")["value"].mean().to_dict() == {"judge": 3.0, "other": 9.0}
    with pytest.raises(DebatelabError, match="already scored this run as another model"):
        score_stances(run_dir, "judge", ScriptedLLM("changed"))


def test_invalid_answers_are_recorded_not_guessed(run_dir):
    summary = score_stances(run_dir, "judge", _judge("somewhere between 3 and 4"), method="generate")
    assert summary.invalid == REPLIES
    stances = debatelab.load(run_dir).stances
    assert stances["value"].isna().all() and not stances["valid"].any()


def test_cli(run_dir, tmp_path, capsys):
    assert main(["score-stance", str(run_dir), "--judge", "scripted"]) == 0
    assert f"{REPLIES} replies scored by scripted" in capsys.readouterr().out
    assert main(["score-stance", str(tmp_path / "nowhere"), "--judge", "scripted"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run database" in err
