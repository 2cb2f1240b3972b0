"""The wave engine on the scripted backend: protocol, batching, storage and resume."""

from __future__ import annotations

import csv
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.llm.base import GenerateRequest
from debatelab.llm.scripted import ScriptedLLM, default_reply
from debatelab.prompts import SURVEY_PREFIX

from conftest import make_bank, write_config


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _survey_aware_reply(request: GenerateRequest) -> str:
    if request.prompt.assistant_prefix == SURVEY_PREFIX:
        return "7 SURVEY-ANSWER-MARK"
    return default_reply(request)


def test_protocol_turn_order_surveys_and_exports(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), topics=["climate_change", "racism"],
                                   survey={"method": "generate"}))
    llm = ScriptedLLM(reply_fn=_survey_aware_reply)
    summary = run_experiment(cfg, tmp_path / "run", llm=llm)
    assert summary.debates == summary.complete == 6
    turns, attitudes = _rows(tmp_path / "run/turns.csv"), _rows(tmp_path / "run/attitudes.csv")
    by_debate = defaultdict(list)
    for t in turns:
        by_debate[t["debate_id"]].append(t)
    firsts = set()
    for rows in by_debate.values():
        order = [int(r["agent_index"]) for r in sorted(rows, key=lambda r: int(r["iteration"]))]
        assert len(order) == 2 * 3
        assert all(order[i] == (order[0] + i) % 3 for i in range(6))  # round robin
        firsts.add(order[0])
    assert len(firsts) > 1, "the first speaker should vary across debates"
    assert len(attitudes) == 6 * 3 * (2 + 1)  # debates x agents x (rounds + 1)
    assert {int(a["iteration"]) for a in attitudes} == {0, 3, 6}
    assert all(a["valid"] == "True" and a["score"] == "7" for a in attitudes)
    # surveys never enter the debate: no reply prompt mentions a survey or its answer
    reply_prompts = [r.prompt.flat_text() for batch in llm.generate_calls for r in batch
                     if r.prompt.assistant_prefix != SURVEY_PREFIX]
    assert len(reply_prompts) == len(turns)
    assert not any("SURVEY-ANSWER-MARK" in p or "survey" in p.lower() for p in reply_prompts)


def _is_survey(batch) -> bool:
    kinds = {r.prompt.assistant_prefix == SURVEY_PREFIX for r in batch}
    assert len(kinds) == 1, "a wave is either every debate's reply or every debate's survey"
    return kinds.pop()


# 5 debates x 3 agents x 2 rounds, all in flight together. Each debate's steps are: survey (3
# agents), 3 replies, survey, 3 replies, survey. A survey wave asks all 15 agents at once.
WAVES = {  # method -> (generate call sizes in order, score call sizes in order)
    "both": ([15, 5, 5, 5, 15, 5, 5, 5, 15], [15, 15, 15]),  # the greedy T=0 answer AND the distribution
    "generate": ([15, 5, 5, 5, 15, 5, 5, 5, 15], []),
    "logprobs": ([5] * 6, [15, 15, 15]),
}


@pytest.mark.parametrize("method", sorted(WAVES))
def test_waves_batch_all_debates_in_flight(tmp_path, bank, method):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=5, max_in_flight=64,
                                   survey={"method": method}))
    llm = ScriptedLLM()
    run_experiment(cfg, tmp_path / "run", llm=llm)
    generate_sizes, score_sizes = WAVES[method]
    assert [len(b) for b in llm.generate_calls] == generate_sizes
    assert [len(b) for b in llm.score_calls] == score_sizes
    surveys = [b for b in llm.generate_calls if _is_survey(b)]
    replies = [b for b in llm.generate_calls if not _is_survey(b)]
    assert [len(b) for b in replies] == [5] * 6  # one reply per debate per wave, 6 replies per debate
    for batch in replies:  # replies are sampled at the config's temperature, with the speakers' stops
        assert {(r.temperature, r.top_p, r.max_tokens) for r in batch} == {(1.0, 1.0, 96)}
        assert all(r.stop for r in batch) and len({r.seed for r in batch}) == 5
    for batch in surveys:  # the paper's survey: the answer at T=0, no stops, the survey's own length
        assert {(r.temperature, r.max_tokens, r.stop) for r in batch} == {(0.0, 8, ())}
    if method == "both":  # the distribution is read from the very prompts the greedy answer saw
        assert [[r.prompt for r in b] for b in surveys] == [[r.prompt for r in b] for b in llm.score_calls]
    for batch in llm.score_calls:
        assert all(r.prompt.assistant_prefix == SURVEY_PREFIX and r.options == tuple(map(str, range(11)))
                   for r in batch)


# 12 debates x 3 agents x 2 rounds (9 steps each) with room for 9 in flight.
@pytest.mark.parametrize("admission, calls, first", [
    ("staggered", 20, [3, 4, 5]),  # ceil(9 / 9) = 1 new debate per wave: its survey beside the others' replies
    ("together", 18, [27, 9, 9]),  # 9 in lockstep, then the other 3
])
def test_admission_staggers_debates_over_their_stages(tmp_path, bank, admission, calls, first):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=12, max_in_flight=9,
                                   admission=admission, survey={"method": "generate"}))
    llm = ScriptedLLM(reply_fn=_survey_aware_reply)
    assert run_experiment(cfg, tmp_path / "run", llm=llm).complete == 12
    assert len(llm.generate_calls) == calls
    assert [len(b) for b in llm.generate_calls[:3]] == first
    mixed = [b for b in llm.generate_calls if len({r.prompt.assistant_prefix == SURVEY_PREFIX for r in b}) == 2]
    assert bool(mixed) == (admission == "staggered")


def test_staggered_and_together_store_the_same_debates(tmp_path, bank):
    out = {}
    for admission in ("staggered", "together"):
        cfg = load_config(write_config(tmp_path / f"{admission}.yaml", personas=str(bank), repetitions=7,
                                       max_in_flight=4, admission=admission))
        run_experiment(cfg, tmp_path / admission, llm=ScriptedLLM(reply_fn=_survey_aware_reply))
        out[admission] = [sorted(map(str, _rows(tmp_path / admission / name))) for name in ("turns.csv", "attitudes.csv")]
    assert out["staggered"] == out["together"] and len(out["staggered"][0]) == 7 * 6


def test_four_agents_inline_topic(tmp_path, bank):
    topic = {"id": "housing", "name": "Housing costs", "question": "How big a problem are housing costs?"}
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), topics=[topic],
                                   agents=["republican", "democrat", "republican", "default"], repetitions=3))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    attitudes = _rows(tmp_path / "run/attitudes.csv")
    assert {a["topic"] for a in attitudes} == {"housing"}
    assert len(attitudes) == 3 * 4 * 3
    per_debate = defaultdict(set)
    for a in attitudes:
        per_debate[a["debate_id"]].add((a["agent"], a["role"]))
    for agents in per_debate.values():
        assert len({name for name, _ in agents}) == 4  # distinct names within a debate
        assert sorted(role for _, role in agents) == ["default", "democrat", "republican", "republican"]
    assert len({a["repetition"] for a in attitudes}) == 3
    combos = {frozenset(n for n, r in agents if r != "default") for agents in per_debate.values()}
    assert len(combos) == 3  # each repetition draws a different persona combination


class _Crash(Exception):
    pass


class CrashingLLM(ScriptedLLM):
    """Fails on the n-th batched call, like a process killed mid-run."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at, self.n = fail_at, 0

    def _tick(self) -> None:
        self.n += 1
        if self.n == self.fail_at:
            raise _Crash()

    def generate(self, requests):
        self._tick()
        return super().generate(requests)

    def score_options(self, requests):
        self._tick()
        return super().score_options(requests)


@pytest.mark.parametrize("fail_at", [1, 2, 4, 7])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, bank, fail_at):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), max_in_flight=2))
    run_experiment(cfg, tmp_path / "clean", llm=ScriptedLLM())
    with pytest.raises(_Crash):
        run_experiment(cfg, tmp_path / "run", llm=CrashingLLM(fail_at))
    db = sqlite3.connect(tmp_path / "run/run.sqlite")

    def counts() -> tuple[int, int]:
        return (db.execute("SELECT COUNT(*) FROM turns").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM surveys").fetchone()[0])

    turns_before, surveys_before = counts()
    resumed = ScriptedLLM()
    run_experiment(cfg, tmp_path / "run", llm=resumed)
    turns_after, surveys_after = counts()
    assert (turns_after, surveys_after) == (3 * 6, 3 * 9)  # 3 debates: 6 replies, 3 agents x 3 surveys
    asked = [r for b in resumed.generate_calls for r in b]
    replies = [r for r in asked if r.prompt.assistant_prefix != SURVEY_PREFIX]
    greedy = [r for r in asked if r.prompt.assistant_prefix == SURVEY_PREFIX]
    scored = [r for b in resumed.score_calls for r in b]
    # only the missing steps were asked for again: one request per missing reply, and for each
    # missing survey one greedy answer and one distribution (method "both")
    assert len(replies) == turns_after - turns_before
    assert len(greedy) == len(scored) == surveys_after - surveys_before
    for name in ("turns.csv", "attitudes.csv"):
        assert (tmp_path / "run" / name).read_text() == (tmp_path / "clean" / name).read_text()
    # a second resume is a no-op
    again = ScriptedLLM()
    run_experiment(cfg, tmp_path / "run", llm=again)
    assert again.generate_calls == [] and again.score_calls == []


def test_run_dir_from_other_config_is_refused(tmp_path, bank):
    run_experiment(load_config(write_config(tmp_path / "a.yaml", personas=str(bank))), tmp_path / "run", llm=ScriptedLLM())
    before = (tmp_path / "run/attitudes.csv").read_text()
    other = load_config(write_config(tmp_path / "b.yaml", personas=str(bank), rounds=3))
    with pytest.raises(DebatelabError, match="different config"):
        run_experiment(other, tmp_path / "run", llm=ScriptedLLM())
    assert (tmp_path / "run/attitudes.csv").read_text() == before


def test_run_dir_from_other_model_is_refused(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "a.yaml", personas=str(bank)))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM("one"))
    with pytest.raises(DebatelabError, match="different model"):
        run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM("two"))


def test_same_seed_reproduces_and_other_seed_differs(tmp_path, bank):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        cfg = load_config(write_config(tmp_path / f"{name}.yaml", personas=str(bank), seed=seed))
        run_experiment(cfg, tmp_path / name, llm=ScriptedLLM())
    text = {n: (tmp_path / n / "turns.csv").read_text() for n in "abc"}
    assert text["a"] == text["b"] and text["a"] != text["c"]


def test_edited_bank_or_topic_wording_is_a_different_run(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "a.yaml", personas=str(bank)))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    bank.write_text(bank.read_text().replace("lifelong", "life-long"))
    with pytest.raises(DebatelabError, match="different config"):
        run_experiment(load_config(tmp_path / "a.yaml"), tmp_path / "run", llm=ScriptedLLM())
    topics = tmp_path / "topics.yaml"
    topics.write_text("- id: housing\n  name: Housing\n  question: How big a problem is housing?\n")
    cfg = load_config(write_config(tmp_path / "b.yaml", personas=str(bank), topics=["housing"], topic_files=["topics.yaml"]))
    run_experiment(cfg, tmp_path / "run2", llm=ScriptedLLM())
    topics.write_text("- id: housing\n  name: Housing\n  question: How serious a problem is housing?\n")
    with pytest.raises(DebatelabError, match="different config"):
        run_experiment(load_config(tmp_path / "b.yaml"), tmp_path / "run2", llm=ScriptedLLM())


def test_runtime_knobs_may_change_on_resume(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "a.yaml", personas=str(bank), backend={"batch_size": 32}))
    with pytest.raises(_Crash):
        run_experiment(cfg, tmp_path / "run", llm=CrashingLLM(3))
    smaller = load_config(write_config(tmp_path / "a.yaml", personas=str(bank), backend={"batch_size": 4},
                                       max_in_flight=1))
    assert run_experiment(smaller, tmp_path / "run", llm=ScriptedLLM()).complete == 3


def test_every_repetition_gets_a_distinct_combination_beyond_the_bank(tmp_path):
    small = make_bank(tmp_path / "b.jsonl", per_party=3)
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(small), agents=["republican", "democrat"],
                                   repetitions=9, rounds=1))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    pairs = defaultdict(set)
    for row in _rows(tmp_path / "run/attitudes.csv"):
        pairs[row["repetition"]].add(row["agent"])
    assert len({frozenset(p) for p in pairs.values()}) == 9  # all 3 x 3 pairs, none repeated


def test_second_writer_is_refused(tmp_path, bank):
    from debatelab.store import open_store

    first = open_store(tmp_path / "run")
    try:
        cfg = load_config(write_config(tmp_path / "a.yaml", personas=str(bank)))
        with pytest.raises(DebatelabError, match="in use by another debatelab process"):
            run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    finally:
        first.close()
    assert run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM()).complete == 3


def test_changing_the_survey_measure_resumes_the_same_debates(tmp_path, bank):
    """The measure only says what analyses read (greedy or expected); the debates, their ids and
    their stored surveys stay the same, so switching it asks the model nothing new."""
    from debatelab.personas import load_bank
    from debatelab.planning import plan_debates

    greedy = load_config(write_config(tmp_path / "a.yaml", personas=str(bank), survey={"measure": "greedy"}))
    expected = load_config(write_config(tmp_path / "a.yaml", personas=str(bank), survey={"measure": "expected"}))
    ident = ScriptedLLM().identity()
    assert [s.debate_id for s in plan_debates(greedy, load_bank(bank), ident)] == \
        [s.debate_id for s in plan_debates(expected, load_bank(bank), ident)]
    run_experiment(greedy, tmp_path / "run", llm=ScriptedLLM())
    before = (tmp_path / "run/attitudes.csv").read_text()
    again = ScriptedLLM()
    assert run_experiment(expected, tmp_path / "run", llm=again).complete == 3
    assert again.generate_calls == [] and again.score_calls == []
    assert (tmp_path / "run/attitudes.csv").read_text() == before
