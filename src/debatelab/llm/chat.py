"""One rendering of a prompt through a tokenizer's chat template, shared by every backend that
tokenizes locally (hf:, embedded, vllm:) and by the dry-run token count, so they all condition
the model on the same text."""

from __future__ import annotations

from typing import Any

from .base import Conditioning, Prompt


def uses_chat_template(tokenizer: Any, prompt: Prompt) -> bool:
    return bool(prompt.messages) and bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, prompt: Prompt) -> str:
    """The text the model sees: the chat template (with the generation prompt) plus the assistant
    prefix when there are messages and a template, else the flat text.

    Some templates refuse a system message (Mistral-7B-Instruct-v0.2's raises "Conversation roles
    must alternate user/assistant..."); the system text then opens the first user message, which
    is what those models' own documentation does with a system prompt."""
    if not uses_chat_template(tokenizer, prompt):
        return prompt.flat_text()
    messages = [m.as_dict() for m in prompt.messages]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja2's TemplateError via the template's raise_exception()
        folded = fold_system(messages)
        if folded is None:
            raise
        try:
            text = tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
        except Exception:
            raise exc from None
    return text + prompt.assistant_prefix


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The system message put in front of the first user message; None when there is none."""
    if not messages or messages[0]["role"] != "system" or len(messages) < 2 or messages[1]["role"] != "user":
        return None
    system, user, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}, *rest]


def local_conditioning(tokenizer: Any, prompt: Prompt, purpose: str, where: str = "in process") -> Conditioning:
    """The :class:`Conditioning` of a backend that renders prompts itself with ``tokenizer``:
    exact text, and for option scoring each option scored as the whole answer (it and the
    end-of-turn token after it, or a newline after a flat text)."""
    templated = uses_chat_template(tokenizer, prompt)
    how = (f"the model's chat template, rendered {where}, the assistant turn prefilled with the prefix"
           if templated else "flat text, no chat template; the assistant prefix appended")
    if purpose == "score":
        how += "; each option scored with the " + ("end-of-turn token" if templated else "newline") + " after it"
    return Conditioning(render(tokenizer, prompt), True, how)


def find_end_of_turn(tokenizer: Any) -> int | None:
    """The special token a chat template writes after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``...); the tokenizer's eos when there is no template or it cannot tell."""
    eos = tokenizer.eos_token_id
    if not getattr(tokenizer, "chat_template", None):
        return eos
    sentinel = "SENTINEL-7f3a"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}], tokenize=False)
    except Exception:  # templates may raise on anything unusual; eos is the safe fallback
        return eos
    after = tokenizer(text.split(sentinel, 1)[-1], add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return after[0] if after and after[0] in special else eos
