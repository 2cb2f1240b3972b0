"""The OpenAI-compatible backend, over real HTTP through the official SDK, against a local fake."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import Any

import pytest
from fakes.openai_client import KEY, fake_key, make_llm  # noqa: F401  (fake_key: autouse here)
from fakes.openai_server import FakeOpenAIServer

from debatelab.errors import DebatelabError
from debatelab.llm.base import LLM, GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.openai_compat import load_openai
from debatelab.llm.openai_scoring import ANSWER_WINDOW
from debatelab.llm.openai_topk import parse_option
from debatelab.llm.options import BackendOptions

SCALE = tuple(str(i) for i in range(11))




def chat(text: str, prefix: str = "") -> Prompt:
    return Prompt(messages=(Message("system", "You are terse."), Message("user", text)), assistant_prefix=prefix)


# --- generate ------------------------------------------------------------------------------------

def test_chat_generate_returns_server_text_and_counts_usage(server: FakeOpenAIServer) -> None:
    llm = make_llm(server)
    assert isinstance(llm, LLM)
    [out] = llm.generate([GenerateRequest(chat("hello there"), max_tokens=50)])
    assert out.text == "echo: hello there"
    assert (out.prompt_tokens, out.completion_tokens, out.finish_reason) == (5, 3, "stop")
    assert server.paths == ["/v1/chat/completions"]
    body = server.bodies[0]
    assert body["model"] == "fake-model"
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
    ]
    # A second batch on the same instance works (fresh client per batch) and usage accumulates.
    [again] = llm.generate([GenerateRequest(Prompt(text="raw prompt"), max_tokens=50)])
    assert again.text == "echo: raw prompt"
    assert server.bodies[1]["messages"] == [{"role": "user", "content": "raw prompt"}]
    assert (llm.usage.prompt_tokens, llm.usage.completion_tokens, llm.usage.calls) == (7, 6, 2)


def test_batch_order_is_preserved_under_concurrency(server: FakeOpenAIServer) -> None:
    # Later requests answer sooner, so completion order is the reverse of input order.
    server.delay = lambda body: 0.005 * (20 - int(body["messages"][-1]["content"].split()[-1]))
    llm = make_llm(server, concurrency=8)
    outs = llm.generate([GenerateRequest(chat(f"question {i}")) for i in range(20)])
    assert [o.text for o in outs] == [f"echo: question {i}" for i in range(20)]
    assert server.max_in_flight > 1


def test_works_when_called_inside_a_running_event_loop(server: FakeOpenAIServer) -> None:
    llm = make_llm(server)

    async def inside() -> list[Any]:
        return llm.generate([GenerateRequest(chat("in a loop"))])

    assert [c.text for c in asyncio.run(inside())] == ["echo: in a loop"]


def test_empty_batch_makes_no_request(server: FakeOpenAIServer) -> None:
    llm = make_llm(server)
    assert llm.generate([]) == [] and llm.score_options([]) == []
    assert server.received == []


def test_completions_api_sends_flat_prompt(server: FakeOpenAIServer) -> None:
    llm = make_llm(server, api="completions")
    prompt = chat("Rate it.", prefix="Rating:")
    [out] = llm.generate([GenerateRequest(prompt, max_tokens=50)])
    assert server.paths == ["/v1/completions"]
    body = server.bodies[0]
    assert body["prompt"] == prompt.flat_text() == "You are terse.\n\nRate it.\n\nRating:"
    assert "messages" not in body
    assert out.text == "echo: " + " ".join(prompt.flat_text().split())  # the fake re-joins words


def test_chat_assistant_prefix_becomes_instruction_and_is_stripped(server: FakeOpenAIServer) -> None:
    server.reply = "Answer: yes, indeed"
    llm = make_llm(server)
    outs = llm.generate([
        GenerateRequest(chat("Agree?", prefix="Answer:")),
        GenerateRequest(chat("Agree?", prefix="Answer: ")),
        GenerateRequest(chat("Agree?", prefix="Verdict:")),
    ])
    assert [o.text for o in outs] == [" yes, indeed", "yes, indeed", "Answer: yes, indeed"]
    # requests go out concurrently, so the server may have seen them in any order
    last = [b["messages"][-1] for b in server.bodies]
    assert {m["role"] for m in last} == {"user"}
    assert sorted(m["content"] for m in last) == sorted(
        f'Agree?\n\nBegin your answer with: "{p}"' for p in ("Answer:", "Answer:", "Verdict:"))  # stripped


def test_stop_strings_cut_text_and_at_most_four_are_sent(server: FakeOpenAIServer) -> None:
    server.reply = "alpha beta gamma delta"
    llm = make_llm(server)
    stops = ("<1>", "<2>", "<3>", "<4>", "gamma")
    [cut, sent] = llm.generate([
        GenerateRequest(chat("x"), stop=stops),
        GenerateRequest(chat("x"), stop=("beta",)),
    ])
    # The fake, like OpenAI, answers 400 to more than four stop strings.
    assert sorted(b["stop"] for b in server.bodies) == [["<1>", "<2>", "<3>", "<4>"], ["beta"]]
    assert (cut.text, cut.finish_reason) == ("alpha beta ", "stop")
    assert (sent.text, sent.finish_reason) == ("alpha ", "stop")


def test_length_finish_reason(server: FakeOpenAIServer) -> None:
    llm = make_llm(server)
    [out] = llm.generate([GenerateRequest(chat("one two three four five"), max_tokens=3)])
    assert (out.text, out.completion_tokens, out.finish_reason) == ("echo: one two", 3, "length")
    assert server.bodies[0]["max_tokens"] == 3


def test_sampling_parameters_are_passed_through(server: FakeOpenAIServer) -> None:
    llm = make_llm(server)
    llm.generate([
        GenerateRequest(chat("a"), temperature=0.3, top_p=0.9, seed=1234),
        GenerateRequest(chat("b"), temperature=1.2),
    ])
    by_prompt = {b["messages"][-1]["content"]: b for b in server.bodies}
    assert (by_prompt["a"]["temperature"], by_prompt["a"]["top_p"], by_prompt["a"]["seed"]) == (0.3, 0.9, 1234)
    assert by_prompt["b"]["temperature"] == 1.2
    assert "seed" not in by_prompt["b"] and "stop" not in by_prompt["b"]


# --- score_options -------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["chat", "completions"])
def test_score_options_maps_server_logprobs(server: FakeOpenAIServer, api: str) -> None:
    server.distribution = {"3": 0.5, "7": 0.2, " 7": 0.1, "10": 0.15, "yes": 0.05}
    # completions without echo: the first token's top alternatives (exact echo scoring is tested
    # in test_openai_logprobs.py)
    llm = make_llm(server, api=api, top_logprobs=5, score_echo=False)
    [scores] = llm.score_options([ScoreRequest(chat("Rate 0-10."), options=("3", "5", "7", "10"), seed=9)])
    assert scores.source == "top_k" and scores.text == "3"  # "5" is not among the alternatives
    assert scores.logprobs[0] == pytest.approx(math.log(0.5))
    assert scores.logprobs[1] == -math.inf
    assert scores.logprobs[2] == pytest.approx(math.log(0.3))  # "7" and " 7" are one answer
    assert scores.logprobs[3] == pytest.approx(math.log(0.15))
    body = server.bodies[0]
    # chat asks for a few tokens: a model asked to begin with the prefix may write it first
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0, 1 if api == "completions" else ANSWER_WINDOW, 9)
    if api == "chat":
        assert (body["logprobs"], body["top_logprobs"]) == (True, 5)
    else:
        assert body["logprobs"] == 5 and "echo" not in body
    assert len(server.received) == 1
    assert (llm.usage.extra["survey_top_k"], llm.usage.extra["survey_fallbacks"]) == (1, 0)


def test_score_options_only_sees_top_alternatives(server: FakeOpenAIServer) -> None:
    llm = make_llm(server, top_logprobs=2)
    [scores] = llm.score_options([ScoreRequest(chat("Rate."), options=SCALE)])
    # The default distribution peaks at 7; only "7" and one neighbour come back.
    assert scores.logprobs[7] == max(scores.logprobs) > -math.inf
    assert sum(lp > -math.inf for lp in scores.logprobs) == 2 and scores.source == "top_k"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("10/10", "10"), ("1 out of 10", "1"), ("7.", "7"), ("Seven", None), ("", None), ("100", None)],
)
def test_score_falls_back_to_generation_without_logprobs(
    server: FakeOpenAIServer, reply: str, expected: str | None
) -> None:
    server.logprobs = False
    server.reply = reply
    llm = make_llm(server)
    [scores] = llm.score_options([ScoreRequest(chat("Rate 0-10."), options=SCALE)])
    assert scores.source == "generated" and scores.text == reply
    assert llm.usage.extra["survey_fallbacks"] == 1 and llm.usage.extra["survey_top_k"] == 0
    want = tuple(0.0 if option == expected else -math.inf for option in SCALE)
    assert scores.logprobs == want
    first, second = server.bodies
    assert first["logprobs"] is True and "logprobs" not in second
    assert (second["temperature"], second["max_tokens"]) == (0, 8)


def test_top_logprobs_zero_goes_straight_to_generation(server: FakeOpenAIServer) -> None:
    server.reply = "4"
    llm = make_llm(server, top_logprobs=0)
    [scores] = llm.score_options([ScoreRequest(chat("Rate."), options=SCALE)])
    assert scores.source == "generated" and scores.logprobs[4] == 0.0
    assert len(server.bodies) == 1 and "logprobs" not in server.bodies[0]
    assert llm.usage.extra["survey_fallbacks"] == 1  # chosen or not, never log-probabilities


def test_score_falls_back_when_server_rejects_logprobs(server: FakeOpenAIServer) -> None:
    server.reply = "2"
    server.fail_next(400, body={"error": {"message": "logprobs are not supported", "type": "invalid_request_error"}})
    llm = make_llm(server)
    [first] = llm.score_options([ScoreRequest(chat("Rate."), options=SCALE)])
    [second] = llm.score_options([ScoreRequest(chat("Rate."), options=SCALE)])
    assert first.source == second.source == "generated" and first.logprobs[2] == 0.0
    assert ["logprobs" in b for b in server.bodies] == [True, False, False]  # it stops asking
    assert llm.usage.extra["survey_fallbacks"] == 2


def test_score_prefix_instruction_asks_for_the_continuation(server: FakeOpenAIServer) -> None:
    llm = make_llm(server)
    llm.score_options([ScoreRequest(chat("Rate.", prefix="Rating:"), options=SCALE)])
    content = server.bodies[0]["messages"][-1]["content"]
    assert content.startswith("Rate.\n\n") and '"Rating:"' in content and "Begin your answer" not in content


def test_parse_option_picks_longest_whole_token() -> None:
    assert parse_option(" 10/10 ", SCALE) == 10
    assert parse_option("1 out of 10", SCALE) == 1
    assert parse_option("Seven", SCALE) is None
    assert parse_option("Yes, definitely", ("Yes", "Yes, definitely", "No")) == 1


# --- retries, failures, concurrency --------------------------------------------------------------

def test_rate_limit_with_retry_after_is_retried(server: FakeOpenAIServer) -> None:
    server.fail_next(429, retry_after="0")
    llm = make_llm(server, max_retries=2)
    [out] = llm.generate([GenerateRequest(chat("hi"))])
    assert out.text == "echo: hi"
    assert len(server.received) == 2 and server.pending_faults == 0


def test_retry_after_header_is_honoured(server: FakeOpenAIServer) -> None:
    server.fail_next(429, retry_after="2")  # without the header the first back-off would be 0.5-1 s
    llm = make_llm(server, max_retries=1)
    started = time.monotonic()
    [out] = llm.generate([GenerateRequest(chat("hi"))])
    assert out.text == "echo: hi" and time.monotonic() - started >= 1.9


def test_request_timeout_fails_that_request_visibly_without_hanging(server: FakeOpenAIServer) -> None:
    llm = make_llm(server, max_retries=1, timeout=0.2, retry_backoff=0.05)
    llm.generate([GenerateRequest(chat("first"))])  # the server has answered (see test_openai_unreachable.py)
    server.reset_stats()
    server.delay = 1.5
    started = time.monotonic()
    [out] = llm.generate([GenerateRequest(chat("hi"))])
    assert out.text == "" and out.error is not None and "timed out" in out.error
    assert out.error.startswith("gave up after 2 attempt(s)")
    assert time.monotonic() - started < 3 and len(server.received) == 2
    assert llm.usage.extra["failed_requests"] == 1 and llm.usage.extra["retries"] == 1


@pytest.mark.parametrize("status", [500, 503])
def test_persistent_failure_fails_the_request_after_exactly_two_attempts(
    server: FakeOpenAIServer, status: int
) -> None:
    server.fail_next(status, count=5)
    llm = make_llm(server, max_retries=1, retry_backoff=0.05)
    started = time.monotonic()
    [out] = llm.generate([GenerateRequest(chat("hi"))])
    assert out.error is not None and str(status) in out.error and "\n" not in out.error
    assert time.monotonic() - started < 5
    assert len(server.received) == 2 and server.pending_faults == 3


def test_error_message_never_contains_the_key(server: FakeOpenAIServer) -> None:
    server.fail_next(401, body={"error": {"message": f"Incorrect API key provided: {KEY}", "type": "auth"}})
    llm = make_llm(server, max_retries=3)
    with pytest.raises(DebatelabError) as info:
        llm.generate([GenerateRequest(chat("hi"))])
    assert KEY not in str(info.value) and "401" in str(info.value)
    assert len(server.received) == 1  # 401 is not retried


def test_concurrency_bound_is_respected(server: FakeOpenAIServer) -> None:
    server.delay = 0.05
    llm = make_llm(server, concurrency=3)
    outs = llm.generate([GenerateRequest(chat(f"q{i}")) for i in range(12)])
    assert len(outs) == 12
    assert server.max_in_flight == 3


# --- configuration, keys, identity ---------------------------------------------------------------

def test_missing_key_for_remote_server_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(DebatelabError, match=r"missing API key: set \$OPENAI_API_KEY"):
        load_openai("gpt-4o-mini", BackendOptions(base_url="https://api.example.com/v1"))
    with pytest.raises(DebatelabError, match="missing API key"):
        load_openai("gpt-4o-mini", BackendOptions())  # the OpenAI default


def test_loopback_server_needs_no_key(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    llm = make_llm(server)
    llm.generate([GenerateRequest(chat("hi"))])
    assert server.authorization == "Bearer EMPTY"


def test_key_comes_from_named_env_var_and_stays_out_of_identity(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-other-secret-5678"
    monkeypatch.setenv("MY_LLM_KEY", secret)
    llm = make_llm(server, api_key_env="MY_LLM_KEY")
    llm.generate([GenerateRequest(chat("hi"))])
    assert server.authorization == f"Bearer {secret}"
    identity = llm.identity()
    assert secret not in repr(identity) and KEY not in repr(identity)
    assert identity["backend"] == "openai" and identity["model"] == "fake-model" and identity["api"] == "chat"
    assert identity["base_url"] == server.url


def test_base_url_from_environment(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
    llm = load_openai("fake-model", BackendOptions(timeout=5.0, max_retries=0))
    [out] = llm.generate([GenerateRequest(chat("via env"))])
    assert out.text == "echo: via env" and llm.identity()["base_url"] == server.url


def test_identity_url_is_normalised_without_credentials() -> None:
    llm = load_openai("m", BackendOptions(base_url="HTTP://user:pw@LocalHost:8000/v1/?token=abc"))
    assert llm.identity()["base_url"] == "http://localhost:8000/v1"
    assert load_openai("m", BackendOptions(base_url="http://[::1]:9/v1")).identity()["base_url"] == "http://[::1]:9/v1"


def test_missing_sdk_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(DebatelabError, match=r"pip install 'debatelab\[openai\]'"):
        load_openai("m", BackendOptions(base_url="http://127.0.0.1:1/v1"))
