"""The ``openai:`` backend against a real peer: llama.cpp's OpenAI-compatible server from PyPI
(llama-cpp-python[server], built by scripts/setup_llama_server.sh into .venv-llama) serving the
embedded SmolLM2 GGUF on 127.0.0.1. The completions path with the chat template rendered
client-side must measure what the in-process model measures (issue 17's target: mean
|Δ expected score| <= 0.3, Q4 arithmetic the only difference); the chat path runs and says what
it cannot do. In CI the server must be there (the test fails instead of skipping)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from debatelab.invariance import INVARIANCE_TOLERANCE, run_invariance
from debatelab.llm.base import GenerateRequest, ScoreRequest
from debatelab.llm.embedded import find_gguf
from debatelab.llm.options import BackendOptions
from debatelab.llm.registry import load_llm
from debatelab.scales import ZERO_TEN
from debatelab.topics import BUILTIN_TOPICS
from debatelab.types import Persona
from debatelab import prompts
from debatelab.preflight import seat_personas

pytestmark = [pytest.mark.embedded, pytest.mark.llama_server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVER_PYTHON = Path(os.environ.get("DEBATELAB_LLAMA_PYTHON", ROOT / ".venv-llama" / "bin" / "python"))
BANK = [Persona(id=f"p{i}", party=party, name=name,
                background=f"You are {name}, a lifelong {party} from Ohio who votes in every election.")
        for i, (party, name) in enumerate([("republican", "Tom"), ("democrat", "Ann"),
                                           ("republican", "Bill"), ("democrat", "Sue")])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not SERVER_PYTHON.is_file():
        message = f"llama.cpp server not installed ({SERVER_PYTHON}): run scripts/setup_llama_server.sh"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    port = _free_port()
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("w")
    proc = subprocess.Popen(
        [str(SERVER_PYTHON), "-m", "llama_cpp.server", "--model", str(find_gguf()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--chat_format", "chatml"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp server did not start (exit {proc.poll()}); see {log.name}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _options(url: str, **extra: object) -> BackendOptions:
    return BackendOptions(base_url=url, api_key_env="DEBATELAB_TEST_NO_KEY", concurrency=1, timeout=120, **extra)


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBATELAB_TEST_NO_KEY", "sk-local-llama-server")


def test_completions_with_the_template_rendered_here_measure_what_the_model_measures(llama_server: str) -> None:
    options = _options(llama_server, api="completions", tokenizer=str(find_gguf()), logprobs_cap=100)
    topics = [BUILTIN_TOPICS["gun_violence"], BUILTIN_TOPICS["illegal_immigration"]]
    check = run_invariance("embedded", "openai:smollm2", topics, 2, other_options=options, bank=BANK)
    overall = check.overall
    assert overall.surveys == overall.compared == 12
    assert overall.same_prompt_score == overall.same_prompt_generate == 12  # the same text, hash for hash
    assert all(side.exact for side in check.sides.values())
    assert overall.mean_abs_delta_expected is not None
    assert overall.mean_abs_delta_expected <= INVARIANCE_TOLERANCE, check.verdict
    assert overall.greedy_equal_share is not None and overall.greedy_equal_share >= 0.9
    assert overall.mean_tv is not None and overall.mean_tv < 0.15


def test_replies_and_chat_surveys_run_through_the_server(llama_server: str) -> None:
    seating = seat_personas(BANK, 1, 0)[0]
    topic = BUILTIN_TOPICS["racism"]
    reply = prompts.reply_prompt(seating, 0, topic, ())
    ask = prompts.survey_prompt(seating, 0, topic, (), ZERO_TEN)
    completions = load_llm("openai:smollm2", _options(llama_server, api="completions", tokenizer="embedded",
                                                      logprobs_cap=20))
    [text] = completions.generate([GenerateRequest(reply, temperature=1.0, max_tokens=24, seed=3)])
    assert text.error is None and text.text.strip() and "<|im_start|>" not in text.text
    chat = load_llm("openai:smollm2", _options(llama_server))
    [said] = chat.generate([GenerateRequest(reply, temperature=1.0, max_tokens=24, seed=3)])
    [scored] = chat.score_options([ScoreRequest(ask, ZERO_TEN.options)])
    assert said.error is None and said.text.strip()
    assert scored.error is None and scored.source in ("logprobs", "top_k", "generated")
    # What the chat path cannot do is said, not hidden: the server renders, the prefix is asked for.
    cond = chat.conditioning(ask, "score")
    assert not cond.exact and "not prefilled" in cond.how
    assert completions.conditioning(ask, "score").sha() == load_llm("embedded").conditioning(ask, "score").sha()


def test_a_ten_that_smollm2_splits_is_scored_from_its_two_tokens(llama_server: str) -> None:
    import math

    import openai
    from transformers import AutoTokenizer

    from debatelab.llm.embedded import ensure_converted

    tokenizer = AutoTokenizer.from_pretrained(ensure_converted())
    assert len(tokenizer("10", add_special_tokens=False).input_ids) == 2  # "1" + "0"
    ask = prompts.survey_prompt(seat_personas(BANK, 1, 0)[0], 0, BUILTIN_TOPICS["gun_violence"], (), ZERO_TEN)
    flat = load_llm("openai:smollm2", _options(llama_server, api="completions", logprobs_cap=100))
    [scores] = flat.score_options([ScoreRequest(ask, ZERO_TEN.options)])
    assert scores.error is None and scores.source == "logprobs" and all(math.isfinite(s) for s in scores.logprobs)
    # The same two steps asked directly: P("1") first, then what follows "1".
    client = openai.OpenAI(base_url=llama_server, api_key="sk-local-llama-server")

    def after(text: str) -> dict[str, float]:
        choice = client.completions.create(model="smollm2", prompt=text, max_tokens=1, temperature=0,
                                           logprobs=100).choices[0]
        return dict(choice.logprobs.top_logprobs[0])

    first, then = after(ask.flat_text()), after(ask.flat_text() + "1")
    p_one = sum(math.exp(lp) for token, lp in first.items() if token.strip() == "1")
    assert math.exp(scores.logprobs[10]) == pytest.approx(p_one * math.exp(then["0"]), rel=1e-3)
    going_on = sum(math.exp(lp) for token, lp in then.items() if token[:1].isalnum())
    assert math.exp(scores.logprobs[1]) == pytest.approx(p_one * (1 - going_on), rel=1e-3)
