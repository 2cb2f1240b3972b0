"""What the agents are told (paper §4.2-4.3, Figure 2), read from the prompts the engine renders and
from the requests the scripted backend records: the Default agent's whole context, the reply
prompt's content, and the temperatures sent for replies, surveys and background stories."""

from __future__ import annotations

import re

import pytest

from debatelab.config import ExperimentConfig, load_config
from debatelab.experiment import run_experiment
from debatelab.llm.base import Message
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.planning import plan_debates
from debatelab.prompts import SURVEY_PREFIX, clean_reply, reply_prompt, survey_prompt
from debatelab.topics import BUILTIN_TOPICS
from debatelab.types import DEFAULT_CONTEXT, Agent, Turn

from conftest import write_config

PAPER_DEFAULT = "You are an American."  # §4.2: the Default agent's "sole directive"
CLIMATE = BUILTIN_TOPICS["climate_change"]


def _speaker(request) -> str:
    """Whose prompt this is: the user message opens with "You are <name>, taking part ..."."""
    match = re.match(r"You are ([^,]+), taking part in a debate", request.prompt.messages[1].content)
    assert match, request.prompt.messages[1].content
    return match.group(1)


def _agents() -> tuple[Agent, ...]:
    return (Agent(name="Andrew", role="republican", background="You are Andrew, a lifelong Republican rancher."),
            Agent(name="Amelia", role="democrat", background="You are Amelia, a lifelong Democrat teacher."),
            Agent(name="Dominik", role="default", background=DEFAULT_CONTEXT))


# ---- the Default agent ---------------------------------------------------------------------------
def test_default_agent_is_seated_with_exactly_you_are_an_american(tmp_path, bank):
    assert DEFAULT_CONTEXT == PAPER_DEFAULT
    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=3))
    personas = load_bank(bank)
    for spec in plan_debates(config, personas, {"backend": "scripted"}):
        [default] = [a for a in spec.agents if a.role == "default"]
        assert default.background == PAPER_DEFAULT and default.persona_id is None
        assert default.name not in {p.name for p in personas}  # a name of its own, no persona's


@pytest.mark.parametrize("render", [reply_prompt, survey_prompt], ids=["reply", "survey"])
def test_default_agents_system_message_is_its_whole_context(render):
    agents = _agents()
    prompt = render(agents, 2, CLIMATE, [])
    assert prompt.messages[0] == Message("system", PAPER_DEFAULT)  # exactly, nothing added
    assert [m.role for m in prompt.messages] == ["system", "user"]
    user = prompt.messages[1].content
    assert "republican" not in user.lower() and "democrat" not in user.lower() and "american" not in user.lower()
    # The background reaches the model only as the system message: the rest of the prompt is the
    # same whatever the agent's background says.
    swapped = list(agents)
    swapped[2] = agents[2].model_copy(update={"background": agents[0].background})
    other = render(tuple(swapped), 2, CLIMATE, [])
    assert other.messages[1:] == prompt.messages[1:] and other.assistant_prefix == prompt.assistant_prefix
    assert other.messages[0].content == agents[0].background


def test_engine_sends_the_default_agent_only_you_are_an_american(tmp_path, bank):
    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=2))
    llm = ScriptedLLM()
    run_experiment(config, tmp_path / "run", llm=llm)
    specs = plan_debates(config, load_bank(bank), llm.identity())
    defaults = {a.name for s in specs for a in s.agents if a.role == "default"}
    requests = [r for batch in llm.generate_calls + llm.score_calls for r in batch]
    to_default = [r for r in requests if _speaker(r) in defaults]
    # per debate: 2 replies, and 3 surveys each asked twice (greedy answer + distribution)
    assert len(to_default) == 2 * (2 + 3 * 2)
    assert all(r.prompt.messages[0] == Message("system", PAPER_DEFAULT) for r in to_default)
    partisan = [r for r in requests if _speaker(r) not in defaults]
    assert partisan and all(r.prompt.messages[0].content.startswith(f"You are {_speaker(r)}, a lifelong")
                            for r in partisan)


# ---- the reply prompt (Figure 2) -----------------------------------------------------------------
def test_reply_prompt_holds_background_topic_full_history_in_order_and_says_debate():
    agents = _agents()
    turns = [Turn(iteration=i + 1, agent_index=i % 3, text=f"point number {i + 1} about the climate")
             for i in range(5)]
    prompt = reply_prompt(agents, 1, CLIMATE, turns)
    system, user = prompt.messages[0].content, prompt.messages[1].content
    assert system == agents[1].background
    assert "climate change" in user and "debate" in user.split()
    lines = [f"{agents[t.agent_index].name}: {t.text}" for t in turns]
    assert "\n\n".join(lines) in user  # the whole history, as "Name: text" lines, in order
    positions = [user.index(line) for line in lines]
    assert positions == sorted(positions)
    assert "Andrew" in user and "Dominik" in user  # the others are named
    assert prompt.assistant_prefix == "Amelia:"  # the model completes Amelia's next line
    first = reply_prompt(agents, 1, CLIMATE, [])
    assert "Nobody has spoken yet." in first.messages[1].content and "point number" not in first.messages[1].content


def test_engine_reply_prompts_carry_every_earlier_turn_in_order(tmp_path, bank):
    import debatelab

    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=1, rounds=3))
    llm = ScriptedLLM()
    run_experiment(config, tmp_path / "run", llm=llm)
    turns = debatelab.load(tmp_path / "run").turns.sort_values("iteration")
    lines = [f"{row.agent}: {row.text}" for row in turns.itertuples()]
    replies = [r for batch in llm.generate_calls for r in batch if r.prompt.assistant_prefix != SURVEY_PREFIX]
    assert len(replies) == len(lines) == 9
    for k, request in enumerate(replies):  # iteration k + 1 sees iterations 1..k, nothing later
        user = request.prompt.messages[1].content
        assert "debate" in user and "climate change" in user
        if k:
            assert "The debate so far:\n\n" + "\n\n".join(lines[:k]) + "\n\n" in user
        assert not any(line in user for line in lines[k:])
        assert request.prompt.assistant_prefix == f"{turns.iloc[k].agent}:"


# ---- temperatures sent ---------------------------------------------------------------------------
def test_defaults_are_the_papers_temperatures():
    config = ExperimentConfig(topics=["racism"], agents=["republican", "democrat"])
    assert config.reply.temperature == 1.0 and config.reply.top_p == 1.0  # §4.3: replies at T=1.0
    assert config.persona_generation.temperature == 1.0  # §4.2: narratives at T=1.0
    assert config.survey.method == "both" and config.survey.resolved_measure == "greedy"  # §4.3: surveys at T=0


@pytest.mark.parametrize("reply", [None, {"temperature": 0.7}], ids=["default", "configured"])
def test_engine_sends_replies_at_the_reply_temperature_and_surveys_at_zero(tmp_path, reply):
    values = {"reply": reply} if reply else {}
    config = load_config(write_config(tmp_path / "c.yaml", repetitions=2, **values))  # no bank: one is written
    llm = ScriptedLLM()
    run_experiment(config, tmp_path / "run", llm=llm)
    asked = [r for batch in llm.generate_calls for r in batch]
    stories = [r for r in asked if not r.prompt.assistant_prefix]
    replies = [r for r in asked if r.prompt.assistant_prefix and r.prompt.assistant_prefix != SURVEY_PREFIX]
    greedy = [r for r in asked if r.prompt.assistant_prefix == SURVEY_PREFIX]
    assert len(stories) == 2 + 2 and all("background story" in r.prompt.messages[-1].content for r in stories)
    assert {r.temperature for r in stories} == {1.0}
    assert len(replies) == 2 * 6 and {(r.temperature, r.top_p) for r in replies} == {((reply or {}).get("temperature", 1.0), 1.0)}
    assert len(greedy) == 2 * 9 and {r.temperature for r in greedy} == {0.0}  # the paper's T=0 survey
    assert sum(len(b) for b in llm.score_calls) == len(greedy)  # and its distribution, same prompts
    assert [r.prompt for b in llm.score_calls for r in b] == [r.prompt for r in greedy]


# ---- what is stored of a reply -------------------------------------------------------------------

NAMES = ["Andrew", "Amelia", "Dominik"]


@pytest.mark.parametrize(("raw", "stored"), [
    (" I think so.", "I think so."),
    ("Andrew: I think so.", "I think so."),  # its own name, written back by a backend that cannot prefill it
    ("Amelia: I think so.", "I think so."),  # another speaker's: never stored inside Andrew's turn
    ("Amelia: Dominik:  I think so.", "I think so."),
    ("I think so.\nAmelia: No.", "I think so."),  # a later speaker line ends it, stops or not
    ("I think so. Dominik: Yes.", "I think so."),
    ("Amelia:", ""),
    ("Amelias are fine. Ameliorate: a word.", "Amelias are fine. Ameliorate: a word."),  # not a speaker
])
def test_clean_reply_removes_every_speakers_prefix_and_later_lines(raw: str, stored: str) -> None:
    assert clean_reply(raw, NAMES) == stored


def test_a_reply_opening_with_another_speakers_name_is_stored_without_it(tmp_path, bank):
    import debatelab

    def reply(request) -> str:  # whoever speaks, the model opens with the name of the first other speaker
        if request.prompt.assistant_prefix == SURVEY_PREFIX:
            return "5"
        me = request.prompt.assistant_prefix[:-1]
        other = re.search(r"taking part in a debate about .+? with (\w+)", request.prompt.messages[1].content).group(1)
        return f"{other}: I hold my view, as {me}. {me}: and more"

    config = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=1, rounds=2))
    run_experiment(config, tmp_path / "run", llm=ScriptedLLM(reply_fn=reply))
    turns = debatelab.load(tmp_path / "run").turns
    assert len(turns) == 6
    for row in turns.itertuples():
        assert row.text == f"I hold my view, as {row.agent}.", row.text
