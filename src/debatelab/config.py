"""Experiment configuration: loaded from YAML (relative paths resolved, CLI overrides applied)
into the pydantic models of :mod:`debatelab.config_schema`, re-exported here; a config with a
``society:`` section loads as :class:`debatelab.society.config.SocietyConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config_schema import (  # noqa: F401  (re-exported: the models' long-standing home)
    ExecutorConfig,
    ExperimentConfig,
    LATER_BACKEND_FIELDS,
    MAX_AGENTS,
    MAX_ATTEMPTS,
    MAX_DEBATES,
    MAX_IN_FLIGHT,
    MAX_MODEL,
    MAX_NAME,
    MAX_PATH,
    MAX_PER_PARTY,
    MAX_REPETITIONS,
    MAX_REPLIES,
    MAX_REPLIES_PER_DEBATE,
    MAX_ROUNDS,
    MAX_TOKENS,
    MAX_TOPICS,
    MAX_TOPIC_FILES,
    MAX_WORKERS,
    Measure,
    PersonaGeneration,
    RUNTIME_BACKEND_FIELDS,
    ReplyConfig,
    SEED_RANGE,
    Seat,
    SurveyConfig,
    Temperature,
    check_path,
    measures_of,
)
from .errors import DebatelabError
from .readers import read_yaml
from .society.config import SocietyConfig, resolve_paths
from .validation import describe


def _resolve_backend_paths(backend: dict[str, Any], base: Path) -> dict[str, Any]:
    """``backend.chat_template`` and ``backend.tokenizer`` (when a path) relative to the config, like the bank."""
    out = dict(backend)
    template = out.get("chat_template")
    if isinstance(template, str) and template.strip() and template not in ("auto", "none"):
        out["chat_template"] = str(base / Path(template).expanduser())
    tokenizer, candidate = out.get("tokenizer"), base / Path(str(out.get("tokenizer"))).expanduser()
    if isinstance(tokenizer, str) and tokenizer.strip() and tokenizer != "embedded" and (
            candidate.exists() or tokenizer.endswith(".gguf")):
        out["tokenizer"] = str(candidate)
    return out


def load_config(path: Path, **overrides: object) -> ExperimentConfig:
    """Read a YAML config, apply CLI overrides (None = keep), resolve relative paths, validate."""
    data = read_yaml(path, "config file")
    if not isinstance(data, dict):
        raise DebatelabError(f"config {path} must be a YAML mapping of keys to values")
    adapter, executor = overrides.pop("adapter", None), overrides.pop("executor", None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if adapter is not None:  # --adapter: a nested backend option
        if not Path(adapter).expanduser().is_dir():
            raise DebatelabError(f"adapter folder not found: {adapter}")
        data["backend"] = {**(data.get("backend") or {}), "adapter": str(Path(adapter).expanduser().resolve())}
    if executor is not None:  # --executor: a nested runtime option
        data["executor"] = {**(data.get("executor") or {}), "kind": executor}
    data.setdefault("name", path.stem)
    base = path.resolve().parent
    # Relative paths are relative to the config file; anything not a non-empty string is left
    # for validation to reject with a proper message.
    if isinstance(data.get("personas"), str) and data["personas"].strip():
        data["personas"] = str(base / Path(data["personas"]).expanduser())
    if isinstance(data.get("agents"), list):  # a seat's adapter folder, like personas
        data["agents"] = [{**a, "adapter": str(base / Path(a["adapter"]).expanduser())}
                          if isinstance(a, dict) and isinstance(a.get("adapter"), str) and a["adapter"].strip() else a
                          for a in data["agents"]]
    if isinstance(data.get("backend"), dict):
        data["backend"] = _resolve_backend_paths(data["backend"], base)
    if isinstance(data.get("topic_files"), list):
        data["topic_files"] = [str(base / Path(p).expanduser()) if isinstance(p, str) and p.strip() else p
                               for p in data["topic_files"]]
    model: type[ExperimentConfig] = ExperimentConfig
    if "society" in data:  # a population on a network instead of a debate roster
        model, data["society"] = SocietyConfig, resolve_paths(data["society"], base)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        raise DebatelabError(f"invalid config {path}: {describe(exc)}") from None
    config.resolved_topics()  # unknown topic ids fail now, not mid-run
    return config
