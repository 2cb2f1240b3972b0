"""Options of several tokens and answers that do not start at the first token, on the
``openai:`` backend's top-k path: the pure arithmetic (``llm/openai_topk.py``) on hand tables,
then the backend over real HTTP against the local fake with a tokenizer that splits "10" into
"1" + "0" (``split_numbers``, as SmolLM2's and Llama's do)."""

from __future__ import annotations

import logging
import math
import pytest
from fakes.openai_client import fake_key, make_llm  # noqa: F401  (fake_key: autouse here)
from fakes.openai_server import FakeOpenAIServer, peaked_distribution

from debatelab.llm.base import Message, Prompt, ScoreRequest
from debatelab.llm.openai_topk import TokenStep, answer_step, map_alternatives, open_heads, split_heads
from debatelab.survey import from_option_scores

SCALE = tuple(str(i) for i in range(11))
LOG = "debatelab.llm.openai_compat"


def survey() -> ScoreRequest:
    prompt = Prompt(messages=(Message("system", "You are Ann."), Message("user", "How severe is it?")),
                    assistant_prefix="Rating: ")
    return ScoreRequest(prompt, options=SCALE, seed=5)


def truth(distribution: dict[str, float]) -> list[float]:
    total = sum(distribution.values())
    return [math.log(distribution[o] / total) for o in SCALE]


# --- arithmetic on hand tables -----------------------------------------------------------------

@pytest.mark.parametrize(("tokens", "at"), [
    (["7", "."], 0),
    (["Rating", ":", " ", "7"], 3),  # the model wrote the prefix itself
    (["R", "ating", ":", " 7"], 3),
    ([" ", "Rating:", " 1", "0"], 2),
    (["The", " answer", " is", " 7"], 0),  # left the prefix at once: the first token is the answer's place
    (["Rat", "ings", " are", " 7"], None),  # left it part way: no answer position
    (["Rating", ":"], None),  # never got past it
])
def test_answer_step_finds_where_the_answer_starts(tokens: list[str], at: int | None) -> None:
    assert answer_step([TokenStep(t, ()) for t in tokens], "Rating: ") == at


def test_a_split_head_is_split_by_what_follows_it() -> None:
    first = (("1", math.log(0.5)), (" 1", math.log(0.1)), ("7", math.log(0.3)))
    scores = map_alternatives(first, SCALE)
    assert open_heads(first, SCALE, scores) == ["1", " 1"]
    after = {"1": (("0", math.log(0.6)), (".", math.log(0.3)), ("5", math.log(0.1))),
             " 1": (("0", math.log(0.2)), ("\n", math.log(0.8)))}
    split = split_heads(first, SCALE, scores, after)
    assert split[10] == pytest.approx(math.log(0.5 * 0.6 + 0.1 * 0.2))
    assert split[1] == pytest.approx(math.log(0.5 * 0.3 + 0.1 * 0.8))  # the word ends: not "0", not "5"
    assert split[7] == pytest.approx(math.log(0.3)) and split[2] == -math.inf
    # Where what follows one of the heads is unknown, "1" and "10" are left out, not guessed.
    unknown = split_heads(first, SCALE, scores, {"1": after["1"], " 1": None})
    assert unknown[1] == unknown[10] == -math.inf and unknown[7] == split[7]


def test_a_whole_ten_among_the_alternatives_opens_no_head() -> None:
    first = (("1", math.log(0.2)), ("10", math.log(0.5)), ("9", math.log(0.3)))
    scores = map_alternatives(first, SCALE)
    assert open_heads(first, SCALE, scores) == [] and split_heads(first, SCALE, scores, {}) == scores


# --- chat over HTTP, "10" split into "1" + "0" --------------------------------------------------

def test_chat_reads_a_split_ten_off_the_greedy_answers_next_token(server: FakeOpenAIServer) -> None:
    server.split_numbers, server.distribution = True, peaked_distribution(mode=10, scale=1.5)
    llm = make_llm(server)
    [scores] = llm.score_options([survey()])
    # The greedy answer begins "1", so its next token's alternatives give P("0" | "1") and the end.
    assert len(server.bodies) == 1 and scores.source == "logprobs"
    assert scores.logprobs == pytest.approx(truth(server.distribution), abs=1e-9)
    assert from_option_scores(0, 0, scores).score == 10  # before the split, "10" counted as "1"


def test_chat_prefill_asks_for_what_follows_a_head_the_answer_did_not_take(server: FakeOpenAIServer) -> None:
    server.split_numbers, server.distribution = True, peaked_distribution(mode=7, scale=2.0)
    llm = make_llm(server, chat_prefill="continue")
    [scores] = llm.score_options([survey()])
    first, second = server.bodies
    assert first["messages"][-1] == {"role": "assistant", "content": "Rating: "}
    assert second["messages"][-1] == {"role": "assistant", "content": "Rating: 1"}
    assert second["continue_final_message"] is True and second["temperature"] == 0 and second["seed"] == 5
    assert scores.source == "logprobs" and scores.logprobs == pytest.approx(truth(server.distribution), abs=1e-9)


def test_chat_without_prefill_leaves_an_unsplit_head_out(server: FakeOpenAIServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    server.split_numbers, server.distribution = True, peaked_distribution(mode=7, scale=2.0)
    llm = make_llm(server)
    with caplog.at_level(logging.WARNING, logger=LOG):
        [scores] = llm.score_options([survey()])
        llm.score_options([survey()])
    want = truth(server.distribution)
    assert scores.source == "top_k" and scores.logprobs[1] == scores.logprobs[10] == -math.inf
    assert [scores.logprobs[i] for i in (0, 2, 7, 9)] == pytest.approx([want[i] for i in (0, 2, 7, 9)], abs=1e-9)
    assert len(server.bodies) == 2  # nothing more asked: chat cannot continue a text
    assert sum("cannot be told apart" in r.getMessage() for r in caplog.records) == 1


def test_chat_finds_the_answer_after_a_prefix_the_model_wrote_itself(server: FakeOpenAIServer) -> None:
    server.chat_preamble = ("Rating", ":", " ")
    server.distribution = peaked_distribution(mode=3)
    llm = make_llm(server)
    [scores] = llm.score_options([survey()])
    assert scores.source == "logprobs" and scores.text == "3"
    assert scores.logprobs == pytest.approx(truth(server.distribution), abs=1e-9)


# --- no option among the top alternatives: a visible fallback ----------------------------------

@pytest.mark.parametrize("api", ["chat", "completions"])
def test_top_logprobs_without_any_option_fall_back_to_the_greedy_answer(
        api: str, caplog: pytest.LogCaptureFixture) -> None:
    words = {"The": 0.7, "I": 0.2, "Well": 0.1}  # the model begins with prose: no number in its top-k
    with FakeOpenAIServer(distribution=words, reply="6") as server:
        llm = make_llm(server, api=api, score_echo=False)
        with caplog.at_level(logging.WARNING, logger=LOG):
            outs = llm.score_options([survey(), survey()])
        bodies = server.bodies
    extra = llm.usage.extra
    assert all(o.source == "generated" for o in outs)
    assert (extra["survey_fallbacks"], extra["survey_top_k"]) == (2, 0)
    assert sum("held none of its options" in r.getMessage() for r in caplog.records) == 1
    if api == "completions":  # a 1-token scoring request, then the greedy answer asked for
        assert len(bodies) == 4 and all(o.logprobs[6] == 0.0 for o in outs)
    else:  # chat's scoring request already is the greedy answer ("The 6"), parsed as is: no option
        assert len(bodies) == 2 and all(o.text == "The 6" for o in outs)
        assert not from_option_scores(0, 0, outs[0]).valid
