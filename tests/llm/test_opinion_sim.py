"""opinion-sim: the known-answer backend follows its documented rule exactly (checked here by an
independent replay with scipy), deterministically, and fails bad parameters in one line."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

import debatelab
from debatelab import prompts
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.debate import Reply, derive_seed, schedule
from debatelab.errors import EXIT_BAD_INPUT, DebatelabError
from debatelab.experiment import run_experiment
from debatelab.llm import load_llm
from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.opinion_params import SimParams, parse_params
from debatelab.llm.opinion_sim import party_of, pew4_probs, pew4_score, swapped, zero_ten_probs
from debatelab.personas import generate_personas, load_bank
from debatelab.scales import PEW4, ZERO_TEN
from debatelab.stance import score_stances
from debatelab.topics import BUILTIN_TOPICS
from debatelab.types import DEFAULT_CONTEXT, Agent, Turn

GUNS, IMMIGRATION = BUILTIN_TOPICS["gun_violence"], BUILTIN_TOPICS["illegal_immigration"]
AGENTS = (Agent(name="Ann", role="republican", background="You are Ann, a Republican who runs a farm."),
          Agent(name="Bo", role="democrat", background="You are Bo, a Democrat who teaches school."),
          Agent(name="Cy", role="default", background=DEFAULT_CONTEXT))


# --- an independent statement of the rule (scipy for the normal, the documented seeds) ----------

def disc_probs(x: float) -> np.ndarray:
    """P(round(clip(Y, 0, 10)) = k), Y ~ N(x, 0.5²)."""
    return np.diff(sps.norm.cdf(np.array([-np.inf, *np.arange(0.5, 10.0, 1.0), np.inf]), loc=x, scale=0.5))


def disc_mean(x: float) -> float:
    return float(np.arange(11) @ disc_probs(x))


def pew_probs(x: float) -> np.ndarray:
    return np.diff(sps.norm.cdf(np.array([-np.inf, 2.5, 5.0, 7.5, np.inf]), loc=x, scale=0.5))


def clip(x: float) -> float:
    return min(10.0, max(0.0, x))


def stated(text: str) -> float | None:
    found = re.search(r"I rate it (-?[\d.]+) out of 10", text)
    return float(found.group(1)) if found else None


def replay(agents, topic_name: str, turns: list[tuple[int, str]], p: SimParams) -> list[dict[int, float]]:
    """Each agent's latent attitude after cycle c = 0, 1, ..., from the roles, the documented seeds
    and the numbers stated in ``turns`` ((agent_index, text) in speaking order)."""
    n, names = len(agents), ",".join(sorted(a.name for a in agents))
    flip = topic_name == "illegal immigration"
    means = {"republican": 8.0 if flip else 2.0, "democrat": 2.0 if flip else 8.0, "default": p.default}
    x = {i: clip(random.Random(derive_seed(p.seed, a.name, a.background, topic_name, names)).gauss(means[a.role], 0.5))
         for i, a in enumerate(agents)}
    out = [dict(x)]
    for k in range(1, len(turns) // n + 1):
        said = {i: stated(text) for i, text in turns[(k - 1) * n: k * n]}
        history = "\n\n".join(f"{agents[i].name}: {text}" for i, text in turns[: k * n])
        new = {}
        for i, v in x.items():
            others = [s for j, s in said.items() if j != i and s is not None]
            m = sum(others) / len(others) if others else v
            seed = derive_seed(p.seed, agents[i].name, agents[i].background, k, history)
            shock = random.Random(seed).gauss(0, p.noise)
            new[i] = v + p.pull * (p.default - v) + p.influence * (m - v) + shock
        x = new
        out.append(dict(x))
    return out


def drive(sim, agents, topic, rounds: int, first: int, scale=ZERO_TEN):
    """A whole debate asked of ``sim`` step by step with the engine's real prompts."""
    turns: list[Turn] = []
    surveys: dict[tuple[int, int], tuple[str, list[float]]] = {}
    for step in schedule(len(agents), rounds, first):
        if isinstance(step, Reply):
            prompt = prompts.reply_prompt(agents, step.agent, topic, turns)
            out = sim.generate([GenerateRequest(prompt, max_tokens=96, stop=prompts.reply_stops(agents),
                                                seed=derive_seed(11, "reply", step.iteration))])[0]
            text = prompts.clean_reply(out.text, [a.name for a in agents])
            turns.append(Turn(iteration=step.iteration, agent_index=step.agent, text=text))
            continue
        for i in step.agents:
            prompt = prompts.survey_prompt(agents, i, topic, turns, scale)
            greedy = sim.generate([GenerateRequest(prompt, temperature=0.0, max_tokens=8)])[0].text
            logprobs = sim.score_options([ScoreRequest(prompt, scale.options)])[0].logprobs
            surveys[(step.iteration, i)] = (greedy, [math.exp(lp) for lp in logprobs])
    return turns, surveys


# --- parameters -----------------------------------------------------------------------------------

BAD = [("pull=x", "pull must be a number, not 'x'"), ("speed=1", "unknown parameter 'speed'"),
       ("pull=1,pull=2", "'pull' given twice"), ("noise=-1", "noise must be >= 0, not '-1'"),
       ("default=11", "default must be within 0..10, not '11'"), ("default=-0.5", "within 0..10"),
       ("pull=nan", "finite"), ("seed=1.5", "seed must be an integer"), ("influence", "needs a value")]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_parameters_fail_in_one_line_at_config_load(text, message, tmp_path, capsys):
    with pytest.raises(DebatelabError, match=re.escape(message)) as raised:
        load_llm(f"opinion-sim:{text}")
    assert "\n" not in str(raised.value) and raised.value.exit_code == EXIT_BAD_INPUT
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": f"opinion-sim:{text}", "topics": ["racism"],
                                    "agents": ["republican", "democrat"]}))
    with pytest.raises(DebatelabError, match=re.escape(message)):
        load_config(path)
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_parameters_and_identity():
    assert parse_params("") == SimParams(0.2, 0.1, 0.3, 6.0, 0)
    assert parse_params(" pull = 0.5 , seed=3,") == SimParams(pull=0.5, seed=3)
    defaults = {"backend": "opinion-sim", "pull": 0.2, "influence": 0.1, "noise": 0.3, "default": 6.0, "seed": 0,
                "version": 1}
    assert load_llm("opinion-sim").identity() == defaults == load_llm("opinion-sim:").identity()
    assert load_llm("opinion-sim:influence=0.4,default=3").identity() == {**defaults, "influence": 0.4, "default": 3}
    assert load_llm("opinion-sim:seed=1").identity() != load_llm("opinion-sim").identity()


# --- the answer distributions ----------------------------------------------------------------------

def test_zero_ten_distribution_is_the_discretised_normal():
    for x in (-1.3, 0.0, 0.2, 3.7, 6.0, 9.9, 10.0, 12.5):
        probs = zero_ten_probs(x)
        assert probs == pytest.approx(disc_probs(x).tolist(), abs=1e-12) and sum(probs) == pytest.approx(1.0)
    assert zero_ten_probs(2.0)[10] > 0  # far bins keep a positive (loggable) mass


def test_mode_is_round_x_except_beside_the_tail_bins():
    """The mode is round(clip(x)) everywhere except within 0.015 of 0.5 and 9.5, where the open tail
    bin (0 or 10) outweighs its neighbour (as the module docstring says)."""
    for x in np.arange(-1.0, 11.0, 0.0007):
        probs = zero_ten_probs(float(x))
        mode = max(range(11), key=probs.__getitem__)
        if abs(x - round(x) - 0.5) < 1e-6 or abs(x - round(x) + 0.5) < 1e-6:
            continue  # an exact half: two bins tie
        if 0.5 < x < 0.515 or 9.485 < x < 9.5:
            assert mode in (round(x), 0 if x < 5 else 10)
        else:
            assert mode == round(clip(float(x))), x
    assert max(range(11), key=zero_ten_probs(9.495).__getitem__) == 10 and round(9.495) == 9


def test_pew4_bins_and_letters():
    sim = load_llm("opinion-sim")
    for x in (-0.5, 1.0, 2.49, 2.5, 4.9, 5.0, 7.49, 7.5, 9.0, 11.0):
        assert pew4_probs(x) == pytest.approx(pew_probs(x).tolist(), abs=1e-12)
    # the letter of the bin holding x, and log-probs aligned by letter whatever the options' order
    prompt = prompts.survey_prompt(AGENTS, 1, GUNS, [], PEW4)
    x = replay(AGENTS, "gun violence", [], parse_params(""))[0][1]
    by_score = pew_probs(x)
    for options in (PEW4.options, ("A", "B", "C", "D"), ("B", "D", "A", "C")):
        got = [math.exp(lp) for lp in sim.score_options([ScoreRequest(prompt, options)])[0].logprobs]
        assert got == pytest.approx([by_score[PEW4.options.index(o)] for o in options], abs=1e-12)
    # greedy: the letter of the bin holding x; Default agents near D = 1, 3.7, 6.2, 9 use all four
    letters = set()
    for default in (1, 3.7, 6.2, 9):
        sim = load_llm(f"opinion-sim:default={default}")
        for i in range(3):
            x = replay(AGENTS, "gun violence", [], SimParams(default=default))[0][i]
            survey = prompts.survey_prompt(AGENTS, i, GUNS, [], PEW4)
            letter = sim.generate([GenerateRequest(survey, temperature=0.0, max_tokens=8)])[0].text
            assert letter == "DCBA"[int(x >= 2.5) + int(x >= 5) + int(x >= 7.5)]
            letters.add(letter)
    assert letters == {"A", "B", "C", "D"}


def test_party_from_background():
    assert party_of("You are Ann, a Republican who ...") == "republican"
    assert party_of("You are Bo, a Democrat; Republicans ...") == "democrat"
    assert party_of("You are Di, a lifelong republican.") == "republican"
    assert party_of(DEFAULT_CONTEXT) == "default" == party_of("You are Ed, who votes for whoever.")
    assert swapped("illegal immigration") and not swapped("gun violence") and not swapped("made-up topic")


# --- the rule, replayed --------------------------------------------------------------------------

@pytest.mark.parametrize("model, params", [
    ("opinion-sim:pull=0.25,influence=0.4,noise=0.6,default=5,seed=3", SimParams(0.25, 0.4, 0.6, 5.0, 3)),
    # overshooting pulls drive attitudes out of 0..10: updates are not clipped, answers are
    ("opinion-sim:pull=1.8,influence=0.2,noise=0,default=0.2", SimParams(1.8, 0.2, 0.0, 0.2, 0)),
])
def test_turn_by_turn_debate_follows_the_rule(model, params):
    """Real prompts, turn by turn: every statement is round(clip(x), 1), every survey's expected
    score that of the discretised normal around x(c), every greedy answer round(clip(x(c)))."""
    sim = load_llm(model)
    turns, surveys = drive(sim, AGENTS, GUNS, rounds=4, first=1)
    said = [(t.agent_index, t.text) for t in turns]
    xs = replay(AGENTS, "gun violence", said, params)
    for k, (i, text) in enumerate(said):
        assert text.startswith("I rate it ") and len(text.split()) <= 96
        assert f"{stated(text):.1f}" == f"{clip(xs[k // 3][i]):.1f}"
    for (iteration, i), (greedy, probs) in surveys.items():
        x = xs[iteration // 3][i]
        assert float(np.arange(11) @ np.array(probs)) == pytest.approx(disc_mean(x), abs=1e-6)
        assert greedy == str(round(clip(x)))
    assert len({round(x[0], 6) for x in xs}) == 5  # attitudes moved every cycle
    if params.pull > 1:
        assert min(x[0] for x in xs) < -0.5  # and left the scale
    assert sim.usage.calls > 0 and sim.usage.completion_tokens > 0 and sim.usage.prompt_tokens > 0


def test_history_with_blank_lines_and_silent_agents():
    """A turn that holds a blank line is still one turn (its whole text seeds the shock); a turn
    stating no number stays out of m, and with no other statement at all m = x."""
    params = SimParams(pull=0.1, influence=0.5, noise=0.5, seed=8)
    sim = load_llm("opinion-sim:pull=0.1,influence=0.5,noise=0.5,seed=8")
    texts = ["I rate it 3.0 out of 10.\n\nMore thoughts.", "I rate it 7.5 out of 10.", "I would rather not say.",
             "I rate it 2.0 out of 10.", "Pass.", "Nothing to add.\n\nReally."]
    turns = [Turn(iteration=k + 1, agent_index=k % 3, text=text) for k, text in enumerate(texts)]
    xs = replay(AGENTS, "gun violence", [(t.agent_index, t.text) for t in turns], params)
    for cycle in (1, 2):
        for i in range(3):
            prompt = prompts.survey_prompt(AGENTS, i, GUNS, turns[: 3 * cycle])
            got = [math.exp(lp) for lp in sim.score_options([ScoreRequest(prompt, ZERO_TEN.options)])[0].logprobs]
            assert got == pytest.approx(disc_probs(xs[cycle][i]).tolist(), abs=1e-9), (cycle, i)


def test_pew4_bin_edges():
    assert [pew4_score(x) for x in (-3, 2.4999, 2.5, 4.9999, 5.0, 7.4999, 7.5, 12)] == [0, 0, 1, 1, 2, 2, 3, 3]


def _run(root: Path, model: str, agents, rounds=3, reps=4, topics=("gun_violence",), **survey):
    root.mkdir(parents=True, exist_ok=True)
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump({"model": model, "topics": list(topics), "agents": agents, "rounds": rounds,
                                    "repetitions": reps, "survey": {"method": "both", **survey}}))
    run_experiment(load_config(path), root / "run")
    return debatelab.load(root / "run", measure="expected")


def _debates(run):
    """Per debate: its agents (backgrounds from the run's own bank), topic name and turns."""
    bank = {p.id: p.background for p in load_bank(run.run_dir / "personas.jsonl")}
    for debate_id, seats in run.agents.groupby("debate_id"):
        seats = seats.sort_values("agent_index")
        agents = tuple(Agent(name=a.agent, role=a.role, background=bank.get(a.persona_id, DEFAULT_CONTEXT))
                       for a in seats.itertuples())
        turns = run.turns[run.turns["debate_id"] == debate_id].sort_values("iteration")
        topic = BUILTIN_TOPICS[turns["topic"].iloc[0]].name.lower()
        yield debate_id, agents, topic, list(zip(turns["agent_index"], turns["text"]))


@pytest.mark.parametrize("model, params", [
    ("opinion-sim:pull=0.3,influence=0.2,noise=0.4,default=6,seed=2", SimParams(0.3, 0.2, 0.4, 6.0, 2)),
    ("opinion-sim", SimParams()),
])
def test_a_real_run_follows_the_rule(tmp_path, model, params):
    """A whole experiment (persona bank generated by the sim, two topics, three roles, resumable
    engine): every stored statement and survey equals the independent replay."""
    run = _run(tmp_path, model, ["republican", "democrat", "default"], reps=3,
               topics=("gun_violence", "illegal_immigration"))
    assert len(run.debates) == 6
    for debate_id, agents, topic, said in _debates(run):
        assert [party_of(a.background) for a in agents] == [a.role for a in agents]
        xs = replay(agents, topic, said, params)
        for k, (i, text) in enumerate(said):
            assert f"{stated(text):.1f}" == f"{clip(xs[k // 3][i]):.1f}"
        surveys = run.surveys[run.surveys["debate_id"] == debate_id]
        assert len(surveys) == 12
        for row in surveys.itertuples():
            x = xs[row.iteration // 3][row.agent_index]
            assert row.value == pytest.approx(disc_mean(x), abs=1e-6) and row.score == round(clip(x))


def test_frozen_and_jumping_agents(tmp_path):
    frozen = _run(tmp_path / "a", "opinion-sim:pull=0,influence=0,noise=0", ["republican", "democrat", "default"])
    assert frozen.surveys.groupby(["debate_id", "agent_index"])["value"].nunique().eq(1).all()
    assert frozen.turns.groupby(["debate_id", "agent_index"])["text"].apply(
        lambda texts: len({stated(t) for t in texts})).eq(1).all()
    jump = _run(tmp_path / "b", "opinion-sim:pull=1,influence=0,noise=0,default=4.3", ["republican", "democrat"])
    later = jump.surveys[jump.surveys["iteration"] > 0]["value"]
    assert later.to_numpy() == pytest.approx([disc_mean(4.3)] * len(later), abs=1e-9)
    assert set(jump.turns[jump.turns["iteration"] > 2]["text"].map(stated)) == {4.3}
    assert (jump.surveys[jump.surveys["iteration"] == 0]["value"] - 4.3).abs().min() > 0.5


def test_parties_point_the_human_way(tmp_path):
    run = _run(tmp_path, "opinion-sim", ["republican", "democrat", "default"], rounds=1, reps=12,
               topics=("gun_violence", "illegal_immigration"))
    start = run.surveys[run.surveys["iteration"] == 0].groupby(["topic", "role"])["value"].mean()
    assert start["gun_violence", "republican"] == pytest.approx(2, abs=0.35)
    assert start["gun_violence", "democrat"] == pytest.approx(8, abs=0.35)
    assert start["illegal_immigration", "republican"] == pytest.approx(8, abs=0.35)
    assert start["illegal_immigration", "democrat"] == pytest.approx(2, abs=0.35)
    assert start["gun_violence", "default"] == pytest.approx(6, abs=0.35)
    assert start["illegal_immigration", "default"] == pytest.approx(6, abs=0.35)


def test_pew4_run_bins_the_latent(tmp_path):
    params = SimParams()
    run = _run(tmp_path, "opinion-sim", ["republican", "democrat", "default"], rounds=2, reps=3, scale="pew4")
    for debate_id, agents, topic, said in _debates(run):
        xs = replay(agents, topic, said, params)
        for row in run.surveys[run.surveys["debate_id"] == debate_id].itertuples():
            x = xs[row.iteration // 3][row.agent_index]
            assert list(row.probs) == pytest.approx(pew_probs(x).tolist(), abs=1e-9)
            assert row.score == int(x >= 2.5) + int(x >= 5) + int(x >= 7.5)
    start = run.surveys[run.surveys["iteration"] == 0].groupby("role")["score"].mean()
    assert start["democrat"] > 2.5 and start["republican"] < 0.5 and 1.5 < start["default"] < 2.5


# --- the judge, personas, everything else ------------------------------------------------------------

def test_the_judge_reads_the_stated_number():
    sim = load_llm("opinion-sim")
    prompt = prompts.judge_prompt(BUILTIN_TOPICS["racism"], 'I rate it 7.8 out of 10. She said "so" twice.')
    assert sim.generate([GenerateRequest(prompt, temperature=0)])[0].text == "8"
    scores = sim.score_options([ScoreRequest(prompt, ZERO_TEN.options)])[0].logprobs
    assert [math.exp(s) for s in scores] == pytest.approx(disc_probs(7.8).tolist(), abs=1e-12)
    blank = prompts.judge_prompt(BUILTIN_TOPICS["racism"], "no number here, not even 7 out of 10")
    assert sim.generate([GenerateRequest(blank, temperature=0)])[0].text == "unclear"
    assert sim.score_options([ScoreRequest(blank, ZERO_TEN.options)])[0].logprobs == pytest.approx([-math.log(11)] * 11)


def test_a_judged_run_matches_what_was_said(tmp_path):
    run = _run(tmp_path, "opinion-sim", ["republican", "democrat"], rounds=2, reps=2)
    score_stances(run.run_dir, "opinion-sim", load_llm("opinion-sim"))
    judged = debatelab.load(run.run_dir, measure="expected")
    stances = judged.stances.merge(run.turns, on=["debate_id", "iteration", "agent_index"])
    assert len(stances) == len(run.turns) == 2 * 2 * 2
    assert (stances["score"] == stances["text"].map(lambda t: round(stated(t)))).all()
    assert stances["expected_score"].to_numpy() == pytest.approx(
        [disc_mean(stated(t)) for t in stances["text"]], abs=1e-6)


def test_personas_carry_their_party():
    sim = load_llm("opinion-sim")
    for max_tokens, min_words in ((200, 100), (30, 25)):
        people = generate_personas(sim, "opinion-sim", {"republican": 3, "democrat": 3}, seed=4,
                                   max_tokens=max_tokens, min_words=min_words, max_attempts=1)
        for person in people:
            assert person.background.startswith(f"You are {person.name}, a {person.party.capitalize()}.")
            assert party_of(person.background) == person.party
            assert min_words <= len(person.background.split()) <= max_tokens
        assert len({p.background for p in people}) == 6


def test_deterministic_pure_and_seeded():
    prompt = prompts.reply_prompt(AGENTS, 2, GUNS, [Turn(iteration=1, agent_index=0, text="I rate it 2.0 out of 10.")])
    request = GenerateRequest(prompt, seed=5)
    first, second = load_llm("opinion-sim"), load_llm("opinion-sim")
    assert first.generate([request]) == second.generate([request]) == first.generate([request])
    other_debate = first.generate([GenerateRequest(prompt, seed=6)])[0].text
    assert other_debate != first.generate([request])[0].text and other_debate.startswith("I rate it ")
    other_seed = load_llm("opinion-sim:seed=1").generate([request])[0].text
    assert stated(other_seed) != stated(first.generate([request])[0].text)
    survey = ScoreRequest(prompts.survey_prompt(AGENTS, 2, GUNS, []), ZERO_TEN.options)
    assert first.score_options([survey]) == second.score_options([survey])


def test_word_limits_stops_and_other_requests():
    sim = load_llm("opinion-sim")
    reply = prompts.reply_prompt(AGENTS, 0, GUNS, [])
    short = sim.generate([GenerateRequest(reply, max_tokens=10)])[0]
    assert len(short.text.split()) <= 10 and short.finish_reason == "stop" and stated(short.text) is not None
    cut = sim.generate([GenerateRequest(reply, stop=(" out of",))])[0].text
    assert cut.startswith("I rate it ") and "out of" not in cut
    other = Prompt(messages=(Message("user", "Generate 10 questions about politics."),))
    text = sim.generate([GenerateRequest(other, seed=1)])[0].text
    assert text and stated(text) is None and "Republican" not in text
    assert sim.generate([GenerateRequest(other, seed=1)])[0].text == text
    odd = sim.score_options([ScoreRequest(prompts.survey_prompt(AGENTS, 0, GUNS, []), ("yes", "no", "maybe"))])[0]
    assert odd.logprobs == pytest.approx([-math.log(3)] * 3)
    unknown = sim.score_options([ScoreRequest(other, ZERO_TEN.options)])[0]
    assert unknown.logprobs == pytest.approx([-math.log(11)] * 11)
