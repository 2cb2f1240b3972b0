"""One rendering of a prompt through a tokenizer's chat template, shared by every backend that
tokenizes locally (hf:, embedded, vllm:) and by the dry-run token count, so they all condition
the model on the same text."""

from __future__ import annotations

from typing import Any

from .base import Prompt


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
