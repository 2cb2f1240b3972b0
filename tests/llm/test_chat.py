"""One chat-template rendering for hf:, vllm: and the dry run, including templates that refuse a
system message (Mistral-7B-Instruct-v0.2's alternation check)."""

from __future__ import annotations

import jinja2
import pytest

from debatelab.llm.base import Message, Prompt
from debatelab.llm.chat import render

# The shape of Mistral-7B-Instruct-v0.2's template: roles must alternate, starting with the user.
MISTRAL_LIKE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


PROMPT = Prompt(messages=(Message("system", "You are Ann, a Democrat."), Message("user", "Rate it.")),
                assistant_prefix="Rating: ")


def test_a_template_that_refuses_system_gets_it_in_the_first_user_message(tokenizer):
    tokenizer.chat_template = MISTRAL_LIKE
    with pytest.raises(jinja2.TemplateError):  # the template really refuses the system message
        tokenizer.apply_chat_template([m.as_dict() for m in PROMPT.messages], tokenize=False)
    text = render(tokenizer, PROMPT)
    assert text.endswith("[INST] You are Ann, a Democrat.\n\nRate it. [/INST]Rating: ")


def test_a_template_that_accepts_system_is_used_as_it_is(tokenizer):
    expected = tokenizer.apply_chat_template([m.as_dict() for m in PROMPT.messages], tokenize=False,
                                             add_generation_prompt=True) + "Rating: "
    assert render(tokenizer, PROMPT) == expected and "You are Ann" in expected


def test_a_template_error_that_folding_cannot_fix_is_raised(tokenizer):
    tokenizer.chat_template = "{{ raise_exception('no') }}"
    with pytest.raises(jinja2.TemplateError, match="no"):
        render(tokenizer, PROMPT)
