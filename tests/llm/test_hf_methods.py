"""Persona-contrastive decoding and activation steering in the transformers backend, against
manual computations on a tiny random Llama (formula, strength 0 = baseline, direction of the move)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from tiny_model import load_tiny
import torch

from debatelab.errors import DebatelabError
from debatelab.llm.base import GenerateRequest, Intervention, Message, Prompt, ScoreRequest, Steer
from debatelab.llm.hf import HFLLM
from debatelab.llm.hf_methods import decoder_layers

SCALE = tuple(str(i) for i in range(11))
PERSONA = "You are Alice, a debate agent who thinks the cost is too high."
PLAIN = "You are an American."


def chat(system: str, user: str = "On a scale from 0 to 10, how much do you agree?", prefix: str = "Rating: ") -> Prompt:
    return Prompt(messages=(Message("system", system), Message("user", user)), assistant_prefix=prefix)


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[HFLLM]:
    yield from load_tiny(tiny_model_dir)


def _next_logprobs(llm: HFLLM, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(llm.model(input_ids=torch.tensor([tokens])).logits[0, -1].float(), -1)


def _manual_option(llm: HFLLM, persona: list[int], plain: list[int], option: list[int], lam: float) -> float:
    """Σ_t log_softmax((1+λ)·ℓ(persona + o[:t]) − λ·ℓ(plain + o[:t]))[o[t]], each prefix in full."""
    total = 0.0
    for t, token in enumerate(option):
        mixed = (1 + lam) * _next_logprobs(llm, persona + option[:t]) - lam * _next_logprobs(llm, plain + option[:t])
        total += float(torch.log_softmax(mixed, -1)[token])
    return total


def _option_tokens(llm: HFLLM, option: str) -> list[int]:
    return llm.tokenizer(option, add_special_tokens=False).input_ids + [llm.end_of_turn]


# ---- persona-contrastive decoding ------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_contrastive_scores_match_the_formula(llm: HFLLM, lam: float) -> None:
    view = llm.with_intervention(Intervention(contrast=lam))
    persona, plain = chat(PERSONA), chat(PLAIN)
    got = view.score_options([ScoreRequest(persona, SCALE, contrast=plain)])[0].logprobs
    assert any(len(_option_tokens(llm, o)) > 2 for o in SCALE)  # "10" is "1" + "0" + end of turn
    for option, value in zip(SCALE, got):
        want = _manual_option(llm, llm.encode(persona), llm.encode(plain), _option_tokens(llm, option), lam)
        assert value == pytest.approx(want, abs=1e-4), option
    base = llm.score_options([ScoreRequest(persona, SCALE)])[0].logprobs
    assert max(abs(a - b) for a, b in zip(got, base)) > 1e-3  # the contrast changed something


def test_contrastive_greedy_generation_follows_the_formula(llm: HFLLM) -> None:
    lam, steps = 1.5, 6
    view = llm.with_intervention(Intervention(contrast=lam))
    persona, plain = chat(PERSONA, prefix=""), chat(PLAIN, prefix="")
    out = view.generate([GenerateRequest(persona, temperature=0.0, max_tokens=steps, contrast=plain)])[0]
    seq_p, seq_n, chosen = llm.encode(persona), llm.encode(plain), []
    for _ in range(steps):
        mixed = (1 + lam) * _next_logprobs(llm, seq_p + chosen) - lam * _next_logprobs(llm, seq_n + chosen)
        token = int(mixed.argmax())
        if token in llm.stop_ids:
            break
        chosen.append(token)
    assert out.text == llm.tokenizer.decode(chosen, skip_special_tokens=True)
    plain_out = llm.generate([GenerateRequest(persona, temperature=0.0, max_tokens=steps)])[0]
    assert plain_out.text != out.text or lam == 0  # on this model the contrast changes the answer


def test_contrastive_at_strength_zero_is_the_baseline_exactly(llm: HFLLM) -> None:
    view = llm.with_intervention(Intervention(contrast=0.0))
    persona, plain = chat(PERSONA), chat(PLAIN)
    reqs = [GenerateRequest(persona, temperature=1.0, max_tokens=8, seed=7, contrast=plain),
            GenerateRequest(persona, temperature=0.0, max_tokens=8, seed=8, contrast=plain)]
    with llm.without_cache():
        base_gen = llm.generate([GenerateRequest(r.prompt, r.temperature, r.max_tokens, seed=r.seed) for r in reqs])
        base_scores = llm.score_options([ScoreRequest(persona, SCALE)])
    with view.without_cache():
        assert view.generate(reqs) == base_gen
        assert view.score_options([ScoreRequest(persona, SCALE, contrast=plain)]) == base_scores
    assert view.identity() == {**llm.identity(), "contrastive": 0.0}


def test_requests_without_a_contrast_are_plain_on_a_contrastive_view(llm: HFLLM) -> None:
    view = llm.with_intervention(Intervention(contrast=3.0))
    persona, plain = chat(PERSONA), chat(PLAIN)
    mixed = view.score_options([ScoreRequest(persona, SCALE), ScoreRequest(persona, SCALE, contrast=plain)])
    alone = llm.score_options([ScoreRequest(persona, SCALE)])[0]
    assert mixed[0].logprobs == pytest.approx(alone.logprobs, abs=1e-5)
    assert mixed[1].logprobs != pytest.approx(alone.logprobs, abs=1e-3)


# ---- activation steering -----------------------------------------------------------------------
def _steer(llm: HFLLM, scale: float, layer: int | None = None) -> HFLLM:
    layer = len(decoder_layers(llm.model)) - 1 if layer is None else layer
    return llm.with_intervention(Intervention(steer=Steer(layer, scale, (chat(PERSONA),), (chat(PLAIN),))))


def _survey_logits(llm: HFLLM, prompt: Prompt) -> torch.Tensor:
    with llm._steered(), torch.inference_mode():
        return llm.model(input_ids=torch.tensor([llm.encode(prompt)])).logits[0, -1].float()


def test_steering_at_scale_zero_is_the_baseline_exactly(llm: HFLLM) -> None:
    view = _steer(llm, 0.0, layer=0)
    prompt = chat(PLAIN)
    reqs = [GenerateRequest(prompt, temperature=1.0, max_tokens=8, seed=3)]
    with llm.without_cache():
        base = llm.generate(reqs), llm.score_options([ScoreRequest(prompt, SCALE)])
    with view.without_cache():
        assert (view.generate(reqs), view.score_options([ScoreRequest(prompt, SCALE)])) == base
    assert view.identity()["steering"]["scale"] == 0.0 and len(view.identity()["steering"]["direction"]) == 16


def test_steering_the_last_layer_moves_the_default_towards_the_persona(llm: HFLLM) -> None:
    """With one prompt each, the last layer's state at the last token plus scale 1 x (persona −
    default) is the persona's state, so the logits land on the persona's: scale s goes part way."""
    persona, plain = _survey_logits(llm, chat(PERSONA)), _survey_logits(llm, chat(PLAIN))
    distances = [float((_survey_logits(_steer(llm, s), chat(PLAIN)) - persona).norm()) for s in (0.0, 0.5, 1.0)]
    assert distances[0] == pytest.approx(float((plain - persona).norm()), rel=1e-5)
    assert distances[0] > distances[1] > distances[2]
    assert distances[2] < 1e-3 * distances[0]
    away = float((_survey_logits(_steer(llm, -1.0), chat(PLAIN)) - persona).norm())
    assert away > distances[0]  # a negative scale pushes the other way


def test_steering_an_inner_layer_moves_the_distribution_and_keeps_views_apart(llm: HFLLM) -> None:
    view = _steer(llm, 4.0, layer=0)
    prompt = chat(PLAIN)
    steered = view.score_options([ScoreRequest(prompt, SCALE)])[0].logprobs
    base = llm.score_options([ScoreRequest(prompt, SCALE)])[0].logprobs
    assert max(abs(a - b) for a, b in zip(steered, base)) > 1e-3
    assert llm.score_options([ScoreRequest(prompt, SCALE)])[0].logprobs == pytest.approx(base, abs=1e-6)  # hook gone
    assert view.prefix_cache is not llm.prefix_cache  # steered keys and values never mix with the base's
    assert _steer(llm, 4.0, layer=0).identity() == view.identity()  # computed once, same SHA


def test_a_layer_the_model_lacks_is_one_line(llm: HFLLM) -> None:
    with pytest.raises(DebatelabError, match="steering layer 99 does not exist: the model has"):
        _steer(llm, 1.0, layer=99)
