"""Backends by model string, imported lazily so ``import debatelab`` stays light."""

from __future__ import annotations

import importlib
from typing import Sequence

from ..errors import DebatelabError
from .base import LLM
from .options import BackendOptions

# prefix -> "module:factory"; the factory takes (name_after_prefix, options)
_BACKENDS: dict[str, str] = {
    "embedded": "debatelab.llm.embedded:load_embedded",
    "hf": "debatelab.llm.hf_load:load_hf",
    "openai": "debatelab.llm.openai_compat:load_openai",
    "opinion-sim": "debatelab.llm.opinion_sim:load_opinion_sim",
    "scripted": "debatelab.llm.scripted:load_scripted",
    "vllm": "debatelab.llm.vllm_backend:load_vllm",
}

MODEL_HELP = ("model strings: embedded | hf:<hub id or local dir> | openai:<model> | scripted | "
              "opinion-sim[:pull=A,influence=B,noise=S,default=D,seed=K] | vllm:<hub id or local dir> (CUDA)")


def split_model(model: str) -> tuple[str, str]:
    """``"hf:org/name"`` -> ``("hf", "org/name")``; ``"embedded"`` -> ``("embedded", "")``."""
    kind, _, rest = model.partition(":")
    if kind not in _BACKENDS:
        raise DebatelabError(f"unknown model {model!r} ({MODEL_HELP})")
    if kind in ("hf", "openai") and not rest:
        raise DebatelabError(f"model {model!r} needs a name after '{kind}:' ({MODEL_HELP})")
    if kind == "opinion-sim":  # standard library only: bad parameters fail when the config loads
        from .opinion_params import parse_params

        parse_params(rest)
    return kind, rest


def load_llm(model: str, options: BackendOptions | None = None, *, adapters: Sequence[str] = ()) -> LLM:
    """Load a backend. ``adapters``: further LoRA folders that agents of this model will use; a
    ``vllm:`` engine registers them at load so one engine serves every adapter (others ignore it)."""
    kind, rest = split_model(model)
    module_name, _, factory = _BACKENDS[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"embedded": "hf", "hf": "hf", "openai": "openai", "vllm": "vllm"}.get(kind, kind)
        raise DebatelabError(
            f"backend {kind!r} needs extra packages ({exc.name} missing): pip install 'debatelab[{extra}]'"
        ) from exc
    if adapters and kind == "vllm":
        settings = module.VLLMSettings(adapters=tuple(adapters))
        return getattr(module, factory)(rest, options or BackendOptions(), settings)
    return getattr(module, factory)(rest, options or BackendOptions())
