"""The transformers side of the mitigation lab's inference-time methods (:mod:`debatelab.methods`).

Persona-contrastive decoding in generation is transformers' own classifier-free-guidance
processor (``UnbatchedClassifierFreeGuidanceLogitsProcessor``) with guidance scale 1 + λ: it
runs the contrast prompts alongside, with their own cache, and returns
``s·(ℓ_p − ℓ_n) + ℓ_n = (1+λ)·ℓ_p − λ·ℓ_n`` on log-softmaxed logits, which samples exactly as
the same combination of raw logits would (a row's softmax ignores a constant). The processor
calls the model through :func:`contrast_processor`'s ``forward``, which positions each left-padded
contrast row from its first real token and keeps only the last position's logits. For option
scoring the same combination is taken at every node of the option tree (:func:`contrast`).

Steering adds a vector to one decoder layer's output through a forward hook that is installed
only while the steered view computes, so other views of the same loaded model are untouched.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from ..errors import DebatelabError
from .base import Prompt, Steer


def contrast(persona: torch.Tensor, plain: torch.Tensor, strength: float) -> torch.Tensor:
    """log_softmax((1+λ)·persona − λ·plain) over the last axis; both are log-softmaxes."""
    return torch.log_softmax((1 + strength) * persona - strength * plain, dim=-1)


def contrast_processor(model: Any, strength: float, ids: torch.Tensor, mask: torch.Tensor) -> Any:
    """transformers' guidance processor on the contrast rows ``ids`` (left-padded, ``mask``)."""
    from transformers import UnbatchedClassifierFreeGuidanceLogitsProcessor

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        # Each token at its real position (from the mask, as generate does), and only the last
        # position's logits: the processor reads no other, and all of them would take
        # rows x prompt length x vocabulary floats on its first call.
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        return model(input_ids, attention_mask=attention_mask, position_ids=positions, logits_to_keep=1, **kwargs)

    return UnbatchedClassifierFreeGuidanceLogitsProcessor(
        1 + strength, forward, unconditional_ids=ids, unconditional_attention_mask=mask, use_cache=True)


def left_padded(seqs: Sequence[list[int]], pad: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder blocks (Llama-style ``model.layers``, GPT-2-style ``transformer.h``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        found: Any = inner
        for name in path.split("."):
            found = getattr(found, name, None)
        if found is not None:
            return found
    raise DebatelabError(f"steering: cannot find the decoder layers of {type(inner).__name__}")


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def steered(model: Any, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """``vector`` added to decoder layer ``layer``'s output at every position while inside."""
    def add(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].dtype), *output[1:])
        return output + vector.to(output.dtype)

    handle = decoder_layers(model)[layer].register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def check_layer(model: Any, layer: int) -> None:
    count = len(decoder_layers(model))
    if not 0 <= layer < count:
        raise DebatelabError(f"steering layer {layer} does not exist: the model has {count} decoder layers (0..{count - 1})")


@torch.inference_mode()
def mean_last_state(llm: Any, layer: int, prompts: Sequence[Prompt], batch_size: int = 16) -> torch.Tensor:
    """Mean over ``prompts`` of decoder layer ``layer``'s output at each prompt's last token."""
    layers, total = decoder_layers(llm.model), None
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_padded([llm.encode(p) for p in prompts[start:start + batch_size]],
                                llm.tokenizer.pad_token_id, llm.device)
        seen: list[torch.Tensor] = []
        handle = layers[layer].register_forward_hook(lambda m, a, out: seen.append(_hidden(out)[:, -1].float()))
        try:
            llm.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        finally:
            handle.remove()
        part = seen[0].sum(0)
        total = part if total is None else total + part
    assert total is not None
    return total / len(prompts)


def steering_direction(llm: Any, steer: Steer) -> tuple[torch.Tensor, str]:
    """Mean persona state − mean default state at the layer (unscaled), and the SHA of its
    float32 bytes (the seat's identity names it)."""
    check_layer(llm.model, steer.layer)
    if not steer.persona_prompts or not steer.default_prompts:
        raise DebatelabError("steering needs persona prompts and default prompts to compute its direction from")
    direction = (mean_last_state(llm, steer.layer, steer.persona_prompts)
                 - mean_last_state(llm, steer.layer, steer.default_prompts))
    return direction, hashlib.sha256(direction.cpu().numpy().tobytes()).hexdigest()[:16]


def prompts_key(steer: Steer) -> str:
    """What a direction depends on besides the model: the layer and every prompt's text."""
    text = repr((steer.layer, steer.persona_prompts, steer.default_prompts))
    return hashlib.sha256(text.encode()).hexdigest()
