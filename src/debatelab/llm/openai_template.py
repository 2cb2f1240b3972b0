"""The chat template rendered client-side for the ``openai:`` backend's completions API, so a
server that takes raw prompts (llama.cpp, vLLM) conditions the model on exactly the text that
``hf:``/``embedded`` render in process.

``backend.chat_template`` picks the template: ``auto`` (the tokenizer's own, when
``backend.tokenizer`` is set; else none), ``none``
(the flat text), or a Jinja template file, rendered with ``backend.tokenizer``'s special tokens.
``backend.tokenizer`` is ``embedded``, a local tokenizer folder, the ``.gguf`` file the server
loads (its tokenizer and template are read from it), or a hub id (downloaded once, as by
transformers). Loading needs transformers (``pip install 'debatelab[hf]'``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DebatelabError
from ..readers import read_text
from . import chat
from .base import Conditioning, Message, Prompt, Purpose
from .options import BackendOptions

MAX_TEMPLATE_BYTES = 2**20


@dataclass(frozen=True)
class ClientTemplate:
    """A tokenizer whose chat template debatelab renders before sending the text."""

    tokenizer: Any
    source: str
    """Where the tokenizer came from (``backend.tokenizer``), for messages."""
    template_sha: str
    """The template's hash, in identity(): another template is another measurement."""
    vocab_sha: str
    """The vocabulary's hash, in identity() instead of the path, so the same tokenizer moved
    elsewhere keeps a run's debate ids."""
    end_text: str
    """The end-of-turn token as text (``<|im_end|>``): what ends an answer, so a survey option is
    scored with it after the option, as in process."""

    def render(self, prompt: Prompt) -> str:
        return chat.render(self.tokenizer, prompt)

    bos: str = ""
    """The BOS token as text when the tokenizer adds one itself (as the server's then does)."""

    def wire_text(self, prompt: Prompt) -> str:
        """What is sent: the rendered text less a leading BOS that the template wrote (Llama 3's
        ``<|begin_of_text|>``) when the server adds one itself; else the model would read two,
        where in process it reads one."""
        text = self.render(prompt)
        return text[len(self.bos):] if self.bos and text.startswith(self.bos) else text

    def conditioning(self, prompt: Prompt, purpose: Purpose) -> Conditioning:
        return chat.local_conditioning(self.tokenizer, prompt, purpose, where="by debatelab and sent as raw text")

    def identity(self) -> dict[str, str]:
        return {"chat_template": self.template_sha, "tokenizer": self.vocab_sha, "end_of_turn": self.end_text}


def resolve_template(options: BackendOptions) -> ClientTemplate | None:
    """The client-side template for a completions backend, or None when it sends the flat text."""
    if options.api != "completions" or options.chat_template == "none":
        return None
    source = options.tokenizer
    if source is None:
        if options.chat_template != "auto":
            raise DebatelabError(f"backend.chat_template {options.chat_template!r} needs backend.tokenizer "
                                 "(the model's tokenizer, for its special tokens)")
        return None
    tokenizer = load_tokenizer(source, options)
    if options.chat_template != "auto":
        tokenizer.chat_template = read_text(Path(options.chat_template), "chat template file", MAX_TEMPLATE_BYTES)
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        if options.chat_template == "auto":
            return None  # a base model: its flat text is what it is meant to read
        raise DebatelabError(f"chat template file {options.chat_template} is empty")
    if not isinstance(template, str):
        raise DebatelabError(f"tokenizer {source} has several named chat templates; give one as backend.chat_template")
    _check_renders(tokenizer, source)
    end = chat.find_end_of_turn(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end) if end is not None else None
    if not end_text:
        raise DebatelabError(f"tokenizer {source} has no end-of-turn or end-of-text token to end an answer with")
    vocab = _sha(repr(sorted(tokenizer.get_vocab().items())))
    return ClientTemplate(tokenizer, source, _sha(template), vocab, end_text, _added_bos(tokenizer))


def _added_bos(tokenizer: Any) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    ids = tokenizer("a").input_ids
    return bos if bos and ids and ids[0] == tokenizer.bos_token_id else ""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_renders(tokenizer: Any, source: str) -> None:
    """A template that cannot render a system and a user message fails here, before any request."""
    probe = Prompt(messages=(Message("system", "You are an American."), Message("user", "Hello.")))
    try:
        chat.render(tokenizer, probe)
    except Exception as exc:  # jinja2's TemplateError, or the template's own raise_exception()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DebatelabError(f"the chat template of {source} cannot render a conversation: {first[:300]}") from None


def load_tokenizer(source: str, options: BackendOptions) -> Any:
    """The tokenizer named by ``source``: ``embedded``, a ``.gguf`` file, a folder or a hub id."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DebatelabError("backend.tokenizer needs transformers: pip install 'debatelab[hf]'") from None
    try:
        if source == "embedded":
            from .embedded import ensure_converted

            return AutoTokenizer.from_pretrained(ensure_converted())
        path = Path(source)
        if path.suffix == ".gguf":
            if not path.is_file():
                raise DebatelabError(f"backend.tokenizer: no GGUF file {source}")
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(source, revision=options.revision,
                                             trust_remote_code=options.trust_remote_code)
    except DebatelabError:
        raise
    except Exception as exc:  # OSError (not found), ValueError (not a tokenizer), hub errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DebatelabError(f"backend.tokenizer {source!r} could not be loaded: {first[:300]}") from None
