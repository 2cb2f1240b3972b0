"""What the ``openai:`` backend makes the model condition on: the chat template rendered
client-side for completions, assistant prefill for chat, and surveys scored as whole answers from
top-k alternatives (the llama.cpp path), each against a real local HTTP server."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from fakes.openai_client import KEY, fake_key, make_llm  # noqa: F401  (fake_key: autouse here)
from fakes.openai_server import FakeOpenAIServer

from debatelab.errors import DebatelabError
from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest, prompt_sha
from debatelab.llm.chat import render
from debatelab.llm.openai_compat import load_openai
from debatelab.llm.openai_template import ClientTemplate
from debatelab.llm.openai_terminated import TerminatedWalk, option_pieces
from debatelab.llm.options import BackendOptions

SCALE = tuple(str(i) for i in range(11))




def survey() -> Prompt:
    return Prompt(messages=(Message("system", "You are Ann."), Message("user", "Rate it 0-10.")),
                  assistant_prefix="Rating: ")


def tokenizer_of(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# --- the completions API: the template rendered here ---------------------------------------------

def test_completions_send_the_chat_template_rendered_client_side(server: FakeOpenAIServer,
                                                                tiny_model_dir: Path) -> None:
    llm = make_llm(server, api="completions", tokenizer=str(tiny_model_dir))
    expected = render(tokenizer_of(tiny_model_dir), survey())
    assert "<|im_start|>assistant\nRating: " in expected  # the template, then the prefill
    llm.generate([GenerateRequest(survey(), max_tokens=4)])
    assert server.bodies[0]["prompt"] == expected
    cond = llm.conditioning(survey())
    assert (cond.text, cond.exact, cond.sha()) == (expected, True, prompt_sha(expected))
    ident = llm.identity()
    assert (len(ident["chat_template"]), len(ident["tokenizer"]), ident["end_of_turn"]) == (16, 16, "<|im_end|>")


def test_the_tokenizer_is_identified_by_content_not_by_path(server: FakeOpenAIServer, tiny_model_dir: Path,
                                                            tmp_path: Path) -> None:
    import shutil

    moved = Path(shutil.copytree(tiny_model_dir, tmp_path / "elsewhere"))
    here = make_llm(server, api="completions", tokenizer=str(tiny_model_dir)).identity()
    assert make_llm(server, api="completions", tokenizer=str(moved)).identity() == here


def test_without_a_tokenizer_or_with_none_the_flat_text_goes(server: FakeOpenAIServer, tiny_model_dir: Path) -> None:
    auto = load_openai(str(tiny_model_dir), BackendOptions(base_url=server.url, api="completions", max_retries=0))
    assert auto.conditioning(survey()).text == survey().flat_text()  # a model folder alone is not a tokenizer
    flat = make_llm(server, api="completions", tokenizer=str(tiny_model_dir), chat_template="none")
    assert flat.conditioning(survey()).text == survey().flat_text()
    assert "chat_template" not in flat.identity()  # ids of runs made before templates are unchanged
    assert "end of the answer" in flat.conditioning(survey(), "score").how


def test_a_template_file_replaces_the_tokenizers(server: FakeOpenAIServer, tiny_model_dir: Path,
                                                 tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    llm = make_llm(server, api="completions", tokenizer=str(tiny_model_dir), chat_template=str(template))
    assert llm.conditioning(survey()).text == "[system] You are Ann.\n[user] Rate it 0-10.\n[assistant] Rating: "
    default = make_llm(server, api="completions", tokenizer=str(tiny_model_dir))
    assert llm.identity()["chat_template"] != default.identity()["chat_template"]


def test_a_template_that_cannot_render_fails_before_any_request(server: FakeOpenAIServer, tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    template = tmp_path / "bad.jinja"
    template.write_text("{{ raise_exception('no system messages here') }}")
    with pytest.raises(DebatelabError, match="cannot render a conversation: no system messages here"):
        make_llm(server, api="completions", tokenizer=str(tiny_model_dir), chat_template=str(template))
    assert server.bodies == []


@pytest.mark.parametrize("options, message", [
    ({"chat_template": "x.jinja"}, "needs backend.tokenizer"),
    ({"tokenizer": "/no/such/dir"}, "could not be loaded"),
    ({"tokenizer": "/no/such/model.gguf"}, "no GGUF file"),
])
def test_bad_template_settings_fail_in_one_line(server: FakeOpenAIServer, options: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(DebatelabError, match=message) as info:
        make_llm(server, api="completions", **options)
    assert "\n" not in str(info.value)


def test_the_chat_api_says_its_server_renders_the_text(server: FakeOpenAIServer) -> None:
    cond = make_llm(server).conditioning(survey(), "score")
    assert not cond.exact and "instruction" in cond.how
    assert '"role": "user"' in cond.text  # the messages' JSON: it identifies the request


def test_chat_prefill_continues_the_assistant_message(server: FakeOpenAIServer) -> None:
    llm = make_llm(server, chat_prefill="continue")
    llm.generate([GenerateRequest(survey(), max_tokens=4)])
    body = server.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "Rating: "}
    assert body["messages"][-2] == {"role": "user", "content": "Rate it 0-10."}  # no instruction added
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert llm.identity()["chat_prefill"] == "continue" and "chat_prefill" not in make_llm(server).identity()
    assert "continue_final_message" in llm.conditioning(survey()).how


# --- survey scoring -------------------------------------------------------------------------------

def test_a_server_that_fails_batched_echo_is_probed_once_then_scored_from_top_k(
        tiny_model_dir: Path) -> None:
    # llama-cpp-python answers 500 to several prompts in one request: one probe, no retries.
    def fail(body: dict[str, Any]) -> str | None:
        return "500" if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 1 else None

    with FakeOpenAIServer(fail_when=fail, split_numbers=True) as server:
        llm = make_llm(server, api="completions", tokenizer=str(tiny_model_dir), max_retries=3, retry_backoff=0.01)
        [first, second] = llm.score_options([ScoreRequest(survey(), SCALE)] * 2)
    echoes = [b for b in server.bodies if b.get("echo")]
    assert len(echoes) == 1  # the probe, sent once, never retried, never again after it failed
    assert first.error is None and second.error is None
    assert llm.usage.extra["failed_requests"] == 0 and llm.usage.extra["retries"] == 0
    # The fake knows no end-of-turn token, so no option ends an answer in its top 5: each survey
    # falls back, visibly, to its parsed greedy answer.
    assert llm.usage.extra["survey_fallbacks"] == 2 and first.source == second.source == "generated"


def test_after_a_failed_probe_the_other_surveys_go_out_together(tiny_model_dir: Path) -> None:
    def fail(body: dict[str, Any]) -> str | None:
        return "500" if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 1 else None

    with FakeOpenAIServer(fail_when=fail, delay=0.05) as server:
        llm = make_llm(server, api="completions", tokenizer=str(tiny_model_dir), concurrency=8)
        results = llm.score_options([ScoreRequest(survey(), SCALE)] * 8)
    assert all(r.error is None for r in results)
    assert server.max_in_flight > 1  # only the probe's survey held the others back


def test_a_transient_failure_of_the_probe_is_retried_not_taken_for_no_echo(server: FakeOpenAIServer,
                                                                           tiny_model_dir: Path) -> None:
    llm = make_llm(server, api="completions", tokenizer=str(tiny_model_dir), max_retries=2, retry_backoff=0.01)
    server.fail_next(503)
    [scores] = llm.score_options([ScoreRequest(survey(), SCALE)])
    assert scores.error is None and llm.usage.extra["survey_exact"] == 1 and llm.usage.extra["retries"] == 1


def test_the_end_of_turn_stops_replies_and_a_bos_the_server_adds_is_not_sent_twice(
        server: FakeOpenAIServer, tiny_model_dir: Path) -> None:
    llm = make_llm(server, api="completions", tokenizer=str(tiny_model_dir))
    llm.generate([GenerateRequest(survey(), max_tokens=4, stop=("\nAnn:",))])
    assert server.bodies[0]["stop"][:2] == ["<|im_end|>", "\nAnn:"]
    bos = ClientTemplate(tokenizer_of(tiny_model_dir), "t", "s", "v", "<|im_end|>", bos="<s>")
    assert bos.wire_text(Prompt(text="<s>hello")) == "hello"


def test_backend_options_of_the_other_api_are_refused() -> None:
    with pytest.raises(ValueError, match="apply to api: completions only"):
        BackendOptions(tokenizer="embedded")
    with pytest.raises(ValueError, match="applies to api: chat only"):
        BackendOptions(api="completions", chat_prefill="continue")


def test_echo_scores_each_option_with_the_end_of_turn_after_it(server: FakeOpenAIServer,
                                                               tiny_model_dir: Path) -> None:
    llm = make_llm(server, api="completions", tokenizer=str(tiny_model_dir))
    llm.score_options([ScoreRequest(survey(), SCALE)])
    [echo] = [b for b in server.bodies if b.get("echo")]
    base = render(tokenizer_of(tiny_model_dir), survey())
    assert echo["prompt"] == [base] + [base + o + "<|im_end|>" for o in SCALE]


class _Table:
    """A known next-token table: alternatives by context, as a llama.cpp server would write them."""

    def __init__(self, table: dict[str, list[tuple[str, float]]]):
        self.table = table
        self.asked: list[tuple[str, int]] = []

    async def ask(self, text: str, k: int) -> tuple[tuple[str, float], ...]:
        self.asked.append((text, k))
        shown: dict[str, float] = {}
        for token, logprob in self.table[text][:k]:
            shown[token] = logprob  # a later "" overwrites the value but keeps the first position
        return tuple(shown.items())


def _walk(table: _Table, k: int, tiny_model_dir: Path) -> TerminatedWalk:
    template = ClientTemplate(tokenizer_of(tiny_model_dir), "tiny", "sha", "vocab", "<|im_end|>")
    return TerminatedWalk(table.ask, template, k, {})


def test_the_walk_multiplies_each_token_and_the_end_of_the_answer(tiny_model_dir: Path) -> None:
    tok = tokenizer_of(tiny_model_dir)
    pieces = option_pieces(tok, "10")
    assert "".join(pieces) == "10"
    lp = math.log
    table = {"B": [("7", lp(0.5)), (pieces[0], lp(0.3)), (" x", lp(0.2))], "B7": [("<|im_end|>", lp(0.4))],
             "B" + pieces[0]: [("<|im_end|>", lp(0.1))] if len(pieces) == 1 else [(pieces[1], lp(0.6)), ("", lp(0.2))]}
    text = "B" + pieces[0]
    for piece in pieces[1:]:
        text += piece
        table[text] = [("", lp(0.9)), ("!", lp(0.05))]
    walk = _walk(_Table(table), 5, tiny_model_dir)
    assert asyncio.run(walk.score("B", "7")) == pytest.approx(lp(0.5 * 0.4))
    expected = 0.3 * (0.6 * 0.9 if len(pieces) == 2 else 0.1)
    assert asyncio.run(walk.score("B", "10")) == pytest.approx(lp(expected))
    assert asyncio.run(walk.score("B", "3")) == -math.inf  # outside the top-k: partial


def test_several_special_tokens_shown_as_empty_text_are_asked_again(tiny_model_dir: Path) -> None:
    lp = math.log
    # The end of turn (0.3) ranks first among three tokens llama.cpp writes as "".
    table = _Table({"B": [("7", lp(0.4))], "B7": [("\n", lp(0.35)), ("", lp(0.3)), ("/", lp(0.2)), ("", lp(0.01)),
                                                  ("", lp(0.001))]})
    walk = _walk(table, 5, tiny_model_dir)
    assert asyncio.run(walk.score("B", "7")) == pytest.approx(lp(0.4 * 0.3))
    assert table.asked[-1] == ("B7", 2)  # cut to just past the first "": it stands alone
    alone = _Table({"B": [("7", lp(0.4))], "B7": [("\n", lp(0.5)), ("", lp(0.3))]})
    assert asyncio.run(_walk(alone, 2, tiny_model_dir).score("B", "7")) == pytest.approx(lp(0.4 * 0.3))
    assert [k for _, k in alone.asked] == [2, 2]  # k distinct alternatives: "" is one token, no second ask


def test_top_logprobs_may_go_up_to_a_servers_own_cap() -> None:
    assert BackendOptions(api="completions", logprobs_cap=100, top_logprobs=100).top_logprobs == 100
    with pytest.raises(ValueError, match="logprobs_cap 100"):
        BackendOptions(api="completions", logprobs_cap=100, top_logprobs=101)
    with pytest.raises(ValueError, match="set backend.logprobs_cap"):
        BackendOptions(api="completions", top_logprobs=6)


def test_template_and_tokenizer_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    from debatelab.config import load_config

    (tmp_path / "tok").mkdir()
    config = tmp_path / "exp.yaml"
    config.write_text("model: openai:m\ntopics: [racism]\nagents: [republican, democrat]\nbackend: {api: completions, tokenizer: tok, "
                      "chat_template: t.jinja}\n")
    backend = load_config(config).backend
    assert (backend.tokenizer, backend.chat_template) == (str(tmp_path / "tok"), str(tmp_path / "t.jinja"))
    config.write_text("model: openai:m\ntopics: [racism]\nagents: [republican, democrat]\nbackend: {api: completions, tokenizer: org/hub-id}\n")
    assert load_config(config).backend.tokenizer == "org/hub-id"  # no such folder: a hub id, left alone
