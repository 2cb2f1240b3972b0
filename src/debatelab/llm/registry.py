"""Backends by model string, imported lazily so ``import debatelab`` stays light."""

from __future__ import annotations

import importlib

from ..errors import DebatelabError
from .base import LLM
from .options import BackendOptions

# prefix -> "module:factory"; the factory takes (name_after_prefix, options)
_BACKENDS: dict[str, str] = {
    "embedded": "debatelab.llm.embedded:load_embedded",
    "hf": "debatelab.llm.hf:load_hf",
    "openai": "debatelab.llm.openai_compat:load_openai",
    "scripted": "debatelab.llm.scripted:load_scripted",
}

MODEL_HELP = "model strings: embedded | hf:<hub id or local dir> | openai:<model> | scripted"


def split_model(model: str) -> tuple[str, str]:
    """``"hf:org/name"`` -> ``("hf", "org/name")``; ``"embedded"`` -> ``("embedded", "")``."""
    kind, _, rest = model.partition(":")
    if kind not in _BACKENDS:
        raise DebatelabError(f"unknown model {model!r} ({MODEL_HELP})")
    if kind in ("hf", "openai") and not rest:
        raise DebatelabError(f"model {model!r} needs a name after '{kind}:' ({MODEL_HELP})")
    return kind, rest


def load_llm(model: str, options: BackendOptions | None = None) -> LLM:
    kind, rest = split_model(model)
    module_name, _, factory = _BACKENDS[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"embedded": "hf", "hf": "hf", "openai": "openai"}.get(kind, kind)
        raise DebatelabError(
            f"backend {kind!r} needs extra packages ({exc.name} missing): pip install 'debatelab[{extra}]'"
        ) from exc
    return getattr(module, factory)(rest, options or BackendOptions())
