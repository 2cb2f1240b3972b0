"""opinion-sim: the known-answer backend follows its stated rule exactly (checked by replaying it
independently here), deterministically, and fails bad parameters in one line."""

import math

import pytest
import yaml
from scipy import stats as sps
from scipy.optimize import brentq

import debatelab
from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.llm import load_llm
from debatelab.llm.base import GenerateRequest, ScoreRequest
from debatelab.llm.opinion_params import SimParams, parse_params
from debatelab.llm.opinion_sim import party_of, pew4_probs, zero_ten_probs
from debatelab.prompts import judge_prompt
from debatelab.scales import ZERO_TEN
from debatelab.topics import BUILTIN_TOPICS


@pytest.mark.parametrize("text, message", [
    ("pull=x", "pull must be a number"), ("speed=1", "unknown parameter"), ("pull=1,pull=2", "given twice"),
    ("noise=-1", "noise must be >= 0"), ("default=11", "default within 0..10"), ("pull=nan", "finite"),
])
def test_bad_parameters_are_one_line(text, message, tmp_path):
    with pytest.raises(DebatelabError, match=message):
        load_llm(f"opinion-sim:{text}")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": f"opinion-sim:{text}", "topics": ["racism"],
                                    "agents": ["republican", "democrat"]}))
    with pytest.raises(DebatelabError, match=message):
        load_config(path)


def test_parameters_and_identity():
    assert parse_params("") == SimParams() and parse_params("pull=0.5,seed=3") == SimParams(pull=0.5, seed=3)
    assert load_llm("opinion-sim:influence=0.4").identity()["influence"] == 0.4


def test_distribution_is_the_discretised_normal():
    for x in (0.2, 3.7, 6.0, 9.9):
        probs = zero_ten_probs(x)
        edges = [-math.inf, *(k + 0.5 for k in range(10)), math.inf]
        expected = [sps.norm.cdf(hi, x, 0.5) - sps.norm.cdf(lo, x, 0.5) for lo, hi in zip(edges, edges[1:])]
        assert probs == pytest.approx(expected, abs=1e-12) and sum(probs) == pytest.approx(1.0)
        assert max(range(11), key=probs.__getitem__) == round(x)
    assert pew4_probs(8.0)[3] == pytest.approx(1 - sps.norm.cdf(7.5, 8.0, 0.5))


def test_party_from_background():
    assert party_of("You are Ann, a Republican who ...") == "republican"
    assert party_of("You are Bo, a Democrat; Republicans ...") == "democrat"
    assert party_of("You are an American.") == "default"


def _run(tmp_path, model, agents, rounds=3, reps=4, topics=("gun_violence",), **survey):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": model, "topics": list(topics), "agents": agents, "rounds": rounds,
                                    "repetitions": reps, "survey": survey or {"method": "both"}}))
    run_experiment(load_config(path), tmp_path / "run")
    return debatelab.load(tmp_path / "run", measure="expected")


def _stated(text):
    return float(text.split("I rate it ")[1].split(" out of 10")[0])


def _latent_from_expected(expected):
    """The x whose discretised normal has this expected score (monotone in x, so unique)."""
    return brentq(lambda x: sum(k * p for k, p in enumerate(zero_ten_probs(x))) - expected, -5, 15, xtol=1e-13)


def test_replay_follows_the_rule(tmp_path):
    """Each survey after cycle c is the discretised normal around x(c), recomputed here from the
    pre-debate latent (recovered from its distribution), the others' statements and the rule; noise 0."""
    A, B, D = 0.3, 0.2, 6.0
    run = _run(tmp_path, f"opinion-sim:pull={A},influence={B},noise=0,default={D}",
               ["republican", "democrat", "default"])
    for debate_id, surveys in run.surveys.groupby("debate_id"):
        turns = run.turns[run.turns["debate_id"] == debate_id].sort_values("iteration")
        start = surveys[surveys["iteration"] == 0]
        x = dict(zip(start["agent_index"], start["value"].map(_latent_from_expected)))
        for cycle in (1, 2, 3):
            said = turns[(turns["iteration"] > 3 * (cycle - 1)) & (turns["iteration"] <= 3 * cycle)]
            stated = dict(zip(said["agent_index"], said["text"].map(_stated)))
            assert stated == pytest.approx({a: round(min(10, max(0, v)), 1) for a, v in x.items()}, abs=0.051)
            x = {a: v + A * (D - v) + B * (sum(s for b, s in stated.items() if b != a) / 2 - v) for a, v in x.items()}
            after = surveys[surveys["iteration"] == 3 * cycle].set_index("agent_index")
            for agent, value in x.items():
                probs = after.at[agent, "probs"]
                assert probs == pytest.approx(zero_ten_probs(value), abs=1e-9)
                assert after.at[agent, "score"] == round(value)


def test_frozen_and_jumping_agents(tmp_path):
    frozen = _run(tmp_path / "a", "opinion-sim:pull=0,influence=0,noise=0", ["republican", "democrat"])
    assert frozen.surveys.groupby(["debate_id", "agent_index"])["value"].nunique().eq(1).all()
    jump = _run(tmp_path / "b", "opinion-sim:pull=1,influence=0,noise=0,default=4", ["republican", "democrat"])
    later = jump.surveys[jump.surveys["iteration"] > 0]["value"]
    assert later.to_numpy() == pytest.approx([4.0] * len(later), abs=1e-6)


def test_parties_point_the_human_way(tmp_path):
    run = _run(tmp_path, "opinion-sim", ["republican", "democrat", "default"], rounds=1, reps=10,
               topics=("gun_violence", "illegal_immigration"))
    start = run.surveys[run.surveys["iteration"] == 0].groupby(["topic", "role"])["value"].mean()
    assert start["gun_violence", "republican"] == pytest.approx(2, abs=0.4)
    assert start["gun_violence", "democrat"] == pytest.approx(8, abs=0.4)
    assert start["illegal_immigration", "republican"] == pytest.approx(8, abs=0.4)
    assert start["gun_violence", "default"] == pytest.approx(6, abs=0.4)


def test_deterministic_and_seeded(tmp_path):
    first = _run(tmp_path / "a", "opinion-sim", ["republican", "democrat"]).surveys["value"]
    again = _run(tmp_path / "b", "opinion-sim", ["republican", "democrat"]).surveys["value"]
    other = _run(tmp_path / "c", "opinion-sim:seed=1", ["republican", "democrat"]).surveys["value"]
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()


def test_pew4_and_the_judge():
    sim = load_llm("opinion-sim")
    prompt = judge_prompt(BUILTIN_TOPICS["racism"], "I rate it 7.8 out of 10. and so on")
    assert sim.generate([GenerateRequest(prompt, temperature=0)])[0].text == "8"
    scores = sim.score_options([ScoreRequest(prompt, ZERO_TEN.options)])[0].logprobs
    assert [math.exp(s) for s in scores] == pytest.approx(zero_ten_probs(7.8))
    blank = judge_prompt(BUILTIN_TOPICS["racism"], "no number here")
    assert sim.generate([GenerateRequest(blank, temperature=0)])[0].text == "unclear"


def test_pew4_run_bins_the_latent(tmp_path):
    run = _run(tmp_path, "opinion-sim:pull=0,influence=0,noise=0", ["republican", "democrat"], rounds=1,
               method="both", scale="pew4")
    for probs, score in zip(run.surveys["probs"], run.surveys["score"]):
        assert len(probs) == 4 and max(range(4), key=probs.__getitem__) == score
    assert set(run.surveys[run.surveys["role"] == "democrat"]["score"]) == {3}
