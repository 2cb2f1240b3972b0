"""Survey scoring on the OpenAI-compatible backend within each API's documented limits, over real
HTTP through the official SDK against the local fake (which, like OpenAI, answers 400 above them).

Legacy completions (the paper's gpt-3.5-turbo-instruct) cap ``logprobs`` at 5, chat caps
``top_logprobs`` at 20. Completions score every option exactly by echo where the server allows it;
otherwise the first token's top alternatives are used, ``source="logprobs"`` only when they hold
every option and ``source="top_k"`` (a partial distribution) when any is missing; a distribution
that is not model log-probabilities is always ``source="generated"`` and counted in ``usage.extra``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.openai_server import FakeOpenAIServer, peaked_distribution

from debatelab.cli import main
from debatelab.config import load_config
from debatelab.errors import DebatelabError, EXIT_BAD_INPUT
from debatelab.llm.base import Message, Prompt, ScoreRequest
from debatelab.llm.openai_compat import OpenAICompatLLM, load_openai
from debatelab.llm.openai_scoring import EchoRow, echo_scores
from debatelab.llm.options import BackendOptions

from conftest import write_config

SCALE = tuple(str(i) for i in range(11))


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make_llm(server: FakeOpenAIServer, **options: Any) -> OpenAICompatLLM:
    return load_openai("fake-model", BackendOptions(**{"base_url": server.url, "timeout": 5.0, "max_retries": 0,
                                                      **options}))


def survey(text: str = "How severe is it?") -> ScoreRequest:
    prompt = Prompt(messages=(Message("system", "You are Ann."), Message("user", text)), assistant_prefix="Rating: ")
    return ScoreRequest(prompt, options=SCALE)


def expected(distribution: dict[str, float]) -> list[float]:
    total = sum(distribution.values())
    return [math.log(distribution[o] / total) for o in SCALE]


# --- the documented limits ---------------------------------------------------------------------

@pytest.mark.parametrize(("api", "cap"), [("chat", 20), ("completions", 5)])
def test_default_asks_for_each_apis_cap(server: FakeOpenAIServer, api: str, cap: int) -> None:
    llm = make_llm(server, api=api, score_echo=False)
    [scores] = llm.score_options([survey()])
    body = server.bodies[0]
    asked = body["top_logprobs"] if api == "chat" else body["logprobs"]
    assert asked == cap and llm.identity()["top_logprobs"] == cap
    assert sum(lp > -math.inf for lp in scores.logprobs) == min(cap, 11)
    # chat's 20 hold all 11 options: complete; completions' 5 cannot: partial, and marked so.
    assert scores.source == ("logprobs" if cap >= 11 else "top_k")


def test_the_fake_refuses_what_openai_refuses(server: FakeOpenAIServer) -> None:
    client = openai.OpenAI(base_url=server.url, api_key="sk-x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum value for logprobs is 5"):
        client.completions.create(model="m", prompt="Rating: ", max_tokens=1, logprobs=6)
    with pytest.raises(openai.BadRequestError, match="Expected a value <= 20"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=1,
                                       logprobs=True, top_logprobs=21)
    refusing = FakeOpenAIServer(echo="refuse").start()
    try:
        client = openai.OpenAI(base_url=refusing.url, api_key="sk-x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="'echo' and 'logprobs'"):
            client.completions.create(model="m", prompt="Rating: 7", max_tokens=0, echo=True, logprobs=1)
    finally:
        refusing.stop()


@pytest.mark.parametrize(("api", "value"), [("completions", 6), ("completions", 20), ("chat", 21)])
def test_a_value_over_the_cap_is_a_one_line_config_error(tmp_path: Path, api: str, value: int) -> None:
    cfg = write_config(tmp_path / "c.yaml", model="openai:m",
                       backend={"base_url": "http://127.0.0.1:9/v1", "api": api, "top_logprobs": value})
    with pytest.raises(DebatelabError) as info:
        load_config(cfg)
    message = str(info.value)
    assert "\n" not in message and f"top_logprobs {value}" in message
    assert f"limit of {5 if api == 'completions' else 20}" in message


def test_over_the_cap_via_the_cli_exits_2_before_any_request(tmp_path: Path, bank: Path, server: FakeOpenAIServer,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "c.yaml", model="openai:m", personas=str(bank),
                       backend={"base_url": server.url, "api": "completions", "top_logprobs": 20})
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "limit of 5" in err
    assert server.received == [] and not (tmp_path / "run").exists()


def test_options_built_without_validation_are_still_checked(server: FakeOpenAIServer) -> None:
    options = BackendOptions(base_url=server.url, api="completions").model_copy(update={"top_logprobs": 20})
    with pytest.raises(DebatelabError, match="limit of 5"):
        load_openai("m", options)
    assert server.received == []


# --- completions: exact scores by echo ---------------------------------------------------------

@pytest.mark.parametrize("split_numbers", [False, True])
def test_echo_scores_every_option_exactly_in_one_request(server: FakeOpenAIServer, split_numbers: bool) -> None:
    server.split_numbers = split_numbers  # True: "10" is the two tokens "1" + "0", as on Llama
    server.distribution = peaked_distribution(mode=9, scale=0.7)
    llm = make_llm(server, api="completions")
    [scores] = llm.score_options([survey()])
    assert scores.source == "logprobs" and scores.error is None and scores.text == "9"
    assert all(math.isfinite(lp) for lp in scores.logprobs)  # complete, so "logprobs", not "top_k"
    # All eleven, though the API returns at most 5 alternatives; "10" and "1" exact when split.
    assert scores.logprobs == pytest.approx(expected(server.distribution), abs=1e-9)
    [body] = server.bodies
    base = survey().prompt.flat_text()
    assert body["prompt"] == [base] + [base + o for o in SCALE]
    assert (body["echo"], body["max_tokens"], body["logprobs"]) == (True, 0, 5)
    extra = llm.usage.extra
    assert (extra["survey_exact"], extra["survey_top_k"], extra["survey_fallbacks"]) == (1, 0, 0)
    assert llm.identity()["score_echo"] is True


def test_echo_scores_reflect_the_prompt(server: FakeOpenAIServer) -> None:
    server.distribution = peaked_distribution(mode=2)
    llm = make_llm(server, api="completions")
    low = llm.score_options([survey()])[0]
    server.distribution = peaked_distribution(mode=8)
    high = llm.score_options([survey()])[0]
    assert max(range(11), key=low.logprobs.__getitem__) == 2 and max(range(11), key=high.logprobs.__getitem__) == 8


def test_echo_scores_arithmetic_on_a_prompt_whose_space_the_option_absorbs() -> None:
    # prompt "... Rating: " ends in a space token; "Rating: 7" tokenises as "Rating:" + " 7"
    base = EchoRow(("A", " Rating:", " "), (None, -1.0, -2.0), (None, None, None))
    rows = [EchoRow(("A", " Rating:", " 1"), (None, -1.0, math.log(0.4)), (None, None, None)),
            EchoRow(("A", " Rating:", " 1", "0"), (None, -1.0, math.log(0.4), math.log(0.25)),
                    (None, None, None, {"0": math.log(0.25), "5": math.log(0.05), ".": math.log(0.7)})),
            EchoRow(("A", " Rating:", " 7"), (None, -1.0, math.log(0.5)), (None, None, None))]
    one, ten, seven = echo_scores(base, rows)
    assert ten == pytest.approx(math.log(0.4 * 0.25))
    assert one == pytest.approx(math.log(0.4 * (1 - 0.25 - 0.05)))  # "1" followed by a digit is not 1
    assert seven == pytest.approx(math.log(0.5))


@pytest.mark.parametrize("mode", ["refuse", "ignore"])
def test_a_server_without_echo_is_detected_once_and_scored_from_top_5(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # "refuse": OpenAI's gpt-3.5-turbo-instruct answers 400; "ignore": llama.cpp answers without echo.
    with FakeOpenAIServer(echo=mode, distribution=peaked_distribution(mode=7)) as server:
        llm = make_llm(server, api="completions")
        with caplog.at_level(logging.WARNING, logger="debatelab.llm.openai_compat"):
            first = llm.score_options([survey()])
            second = llm.score_options([survey(), survey("Again?")])
        bodies = server.bodies
    assert [b.get("echo", False) for b in bodies] == [True, False, False, False]  # it stops trying
    assert all(b["logprobs"] == 5 for b in bodies)
    for scores in first + second:
        # The paper's path: true log-probabilities, but only 5 of 11 options; never "logprobs".
        assert scores.source == "top_k" and sum(lp > -math.inf for lp in scores.logprobs) == 5
        assert max(range(11), key=scores.logprobs.__getitem__) == 7
    extra = llm.usage.extra
    assert (extra["survey_exact"], extra["survey_top_k"], extra["survey_fallbacks"]) == (0, 3, 0)
    assert extra["echo_refused"] is True
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "echo" in warnings[0] and "top 5" in warnings[0] and "top_k" in warnings[0]


def test_without_echo_a_split_ten_takes_a_second_request() -> None:
    # A server that refuses echo and splits "10" into "1" + "0": the first token's top 5 hold "1"
    # but never "10", so a second 1-token request on prompt + "1" gives P("0" | "1").
    dist = peaked_distribution(mode=9, scale=0.6)
    with FakeOpenAIServer(echo="refuse", split_numbers=True, distribution=dist) as server:
        llm = make_llm(server, api="completions")
        [scores] = llm.score_options([survey()])
        bodies = server.bodies
    assert len(bodies) == 3 and bodies[0]["echo"] and bodies[2]["prompt"] == survey().prompt.flat_text() + "1"
    want = expected(dist)
    assert scores.logprobs[10] == pytest.approx(want[10]) and scores.logprobs[1] == pytest.approx(want[1])
    assert scores.logprobs[9] == pytest.approx(want[9])
    assert scores.source == "top_k" and -math.inf in scores.logprobs  # 6 of 11 still missing


def test_a_survey_the_server_rejects_outright_fails_alone_and_disables_nothing(server: FakeOpenAIServer) -> None:
    server.fail_when = lambda body: 400 if "doomed" in str(body) else None
    llm = make_llm(server, api="completions")
    [bad] = llm.score_options([survey("doomed")])
    [good] = llm.score_options([survey()])
    assert bad.error is not None and bad.error.startswith("rejected:") and bad.logprobs == ()
    assert good.source == "logprobs" and good.error is None
    assert server.bodies[-1]["echo"] is True  # echo was not blamed for a survey that fails anyway
    assert llm.usage.extra["survey_exact"] == 1 and llm.usage.extra["survey_fallbacks"] == 0


def test_score_echo_false_skips_echo(server: FakeOpenAIServer) -> None:
    llm = make_llm(server, api="completions", score_echo=False)
    llm.score_options([survey()])
    assert "echo" not in server.bodies[0] and llm.identity()["score_echo"] is False


# --- chat --------------------------------------------------------------------------------------

def test_chat_reads_all_eleven_options_from_the_first_token(server: FakeOpenAIServer) -> None:
    server.distribution = peaked_distribution(mode=4)
    llm = make_llm(server)
    [scores] = llm.score_options([survey()])
    assert scores.source == "logprobs" and scores.logprobs == pytest.approx(expected(server.distribution))
    assert all(math.isfinite(lp) for lp in scores.logprobs)
    assert (server.bodies[0]["logprobs"], server.bodies[0]["top_logprobs"]) == (True, 20)
    assert llm.usage.extra["survey_top_k"] == 1  # the counter names the method, not completeness


def test_chat_top_20_missing_an_option_is_marked_partial(server: FakeOpenAIServer) -> None:
    # 15 likelier non-answers crowd 6 of the 11 options out of the top 20.
    numbers = peaked_distribution(mode=3)
    server.distribution = {**{f"word{i}": 0.05 for i in range(15)}, **{o: 0.25 * p for o, p in numbers.items()}}
    llm = make_llm(server)
    [scores] = llm.score_options([survey()])
    assert scores.source == "top_k" and sum(math.isfinite(lp) for lp in scores.logprobs) == 4
    seen = [o for o, lp in zip(SCALE, scores.logprobs) if math.isfinite(lp)]
    # The five likeliest options less "1": with "10" outside the top 20, the token "1" may be the
    # start of "10", and chat cannot continue a text to tell them apart, so both are left out.
    assert seen == ["2", "3", "4", "5"]
    assert scores.logprobs[3] == pytest.approx(math.log(0.25 * numbers["3"]))  # true log-probabilities
    assert (llm.usage.extra["survey_top_k"], llm.usage.extra["survey_fallbacks"]) == (1, 0)
    assert llm.usage.extra["heads_unsplit"] is True


@pytest.mark.parametrize(("api", "source"), [("chat", "logprobs"), ("completions", "top_k")])
def test_a_partial_score_is_stored_as_top_k(server: FakeOpenAIServer, api: str, source: str) -> None:
    from debatelab.survey import from_option_scores

    llm = make_llm(server, api=api, score_echo=False)
    [scores] = llm.score_options([survey()])
    answer = from_option_scores(0, 0, scores)  # SurveyAnswer accepts every source a backend returns
    assert answer.source == source and answer.valid and answer.score == 7
    assert answer.probs is not None and sum(p > 0 for p in answer.probs) == (11 if source == "logprobs" else 5)


# --- never silently ----------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["chat", "completions"])
def test_every_generated_distribution_is_counted(api: str, caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAIServer(logprobs=False, reply="6") as server:
        llm = make_llm(server, api=api)
        with caplog.at_level(logging.WARNING, logger="debatelab.llm.openai_compat"):
            outs = llm.score_options([survey(f"q{i}") for i in range(3)]) + llm.score_options([survey()])
    assert all(o.source == "generated" and o.logprobs[6] == 0.0 for o in outs)
    assert llm.usage.extra["survey_fallbacks"] == 4 and llm.usage.extra["logprobs_refused"] is True
    assert llm.usage.extra["survey_exact"] == llm.usage.extra["survey_top_k"] == 0
    assert sum("greedy answers" in r.getMessage() for r in caplog.records) == 1


def test_a_server_refusing_logprobs_falls_back_counted_after_generation_works(server: FakeOpenAIServer) -> None:
    # Reasoning models answer 400 to logprobs; echo needs logprobs too.
    server.fail_when = lambda body: 400 if body.get("logprobs") is not None else None
    server.reply = "3"
    llm = make_llm(server, api="completions")
    [scores] = llm.score_options([survey()])
    assert scores.source == "generated" and scores.logprobs[3] == 0.0
    assert [("echo" in b, "logprobs" in b) for b in server.bodies] == [(True, True), (False, True), (False, False)]
    llm.score_options([survey()])
    assert "logprobs" not in server.bodies[-1] and llm.usage.extra["survey_fallbacks"] == 2
