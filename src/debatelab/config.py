"""Experiment configuration: pydantic models (unknown keys rejected), loaded from YAML."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import DebatelabError, read_yaml
from .llm.options import BackendOptions
from .llm.registry import split_model
from .topics import BUILTIN_TOPICS, Topic, load_topic_file
from .types import ROLES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplyConfig(_Strict):
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of debate replies (paper: 1.0)."""
    max_tokens: int = Field(96, ge=1)
    """Longest reply in tokens."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass (1.0 = off)."""


class SurveyConfig(_Strict):
    method: Literal["generate", "logprobs"] = "logprobs"
    """``generate``: greedy text parsed as an integer; ``logprobs``: distribution over 0..10."""
    max_tokens: int = Field(8, ge=1)
    """Longest generated survey answer (``generate`` only)."""


class PersonaGeneration(_Strict):
    per_party: int | None = Field(None, ge=1)
    """Personas per party when the run generates its own bank (None = as many as the roster needs)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of background stories (paper: 1.0)."""
    max_tokens: int = Field(200, ge=16)
    """Longest background story in tokens."""
    min_words: int = Field(25, ge=1)
    """Shorter outputs count as malformed and are regenerated."""
    max_attempts: int = Field(4, ge=1)
    """Generation attempts per persona before the run stops with an error."""


class ExecutorConfig(_Strict):
    kind: Literal["local", "ray"] = "local"
    """``local``: waves in this process. ``ray``: debates sharded across Ray workers, each with its
    own backend, every wave streamed back to this process, the run's single SQLite writer."""
    address: str | None = None
    """Ray cluster address (e.g. ``auto`` or ``ray://head:10001``); None starts a local Ray instance."""
    workers: int = Field(2, ge=1)
    """Ray workers (actors); each loads its own backend and runs its shard of debates in waves."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs Ray reserves for each worker."""
    gpus_per_worker: float = Field(0.0, ge=0)
    """GPUs Ray reserves for each worker (e.g. 1 for a vllm: or hf: model on CUDA)."""


class Seat(_Strict):
    """A roster entry with its own model: ``{role: republican, model: hf:org/x, adapter: dir}``."""

    role: str
    """republican, democrat or default."""
    model: str | None = None
    """Model string for this agent (None = the experiment's ``model``)."""
    adapter: str | None = None
    """LoRA adapter folder for this agent (None = the experiment's ``backend.adapter``)."""

    def key(self, default_model: str, default_adapter: str | None) -> str:
        """The model this seat runs on, as one string; "" when it is the experiment's own."""
        model, adapter = self.model or default_model, self.adapter or default_adapter
        if (model, adapter) == (default_model, default_adapter):
            return ""
        return model if adapter is None else f"{model}+{adapter}"


class ExperimentConfig(_Strict):
    name: str | None = None
    """Label stored with the run (defaults to the config file's stem)."""
    model: str = "embedded"
    """Model string: embedded | hf:<hub id or dir> | openai:<model> | scripted."""
    backend: BackendOptions = BackendOptions()
    """Backend options (dtype, batch size, base URL, concurrency, ...)."""
    topics: list[str | Topic] = Field(min_length=1)
    """Built-in topic ids, ids from ``topic_files``, or inline mappings (id, name, question)."""
    topic_files: list[Path] = []
    """YAML files of extra topics (paths relative to the config file)."""
    agents: list[str | Seat] = Field(min_length=2)
    """The roster, e.g. [republican, democrat, default]; parties may repeat. An entry may be a
    mapping that gives the agent its own model and/or adapter (see :class:`Seat`)."""
    rounds: int = Field(3, ge=1)
    """Round-robin cycles; a debate has rounds x len(agents) replies."""
    repetitions: int = Field(1, ge=1)
    """Debates per topic, each with a different persona combination."""
    seed: int = 0
    """Master seed: first speakers, persona draws and every sampling seed derive from it."""
    personas: Path | None = None
    """Persona bank (JSONL). When absent, the run generates one with its own model."""
    persona_generation: PersonaGeneration = PersonaGeneration()
    """How a run without a bank generates personas."""
    reply: ReplyConfig = ReplyConfig()
    """Debate reply sampling."""
    survey: SurveyConfig = SurveyConfig()
    """Attitude survey method."""
    max_in_flight: int = Field(64, ge=1)
    """Debates advanced together in one wave (the backend batches their requests); per worker under Ray."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where waves run: in this process, or across a Ray cluster (a runtime choice; results are the same)."""

    @field_validator("personas", "topic_files", mode="before")
    @classmethod
    def _no_empty_paths(cls, value: object) -> object:
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in items):
            raise ValueError("a path must not be empty")
        return value

    @field_validator("agents")
    @classmethod
    def _known_roles(cls, agents: list[str | Seat]) -> list[str | Seat]:
        for entry in agents:
            role = entry.role if isinstance(entry, Seat) else entry
            if role not in ROLES:
                raise ValueError(f"unknown agent role {role!r} (choose from {', '.join(ROLES)})")
            if isinstance(entry, Seat) and entry.model is not None:
                try:
                    split_model(entry.model)
                except DebatelabError as exc:
                    raise ValueError(str(exc)) from None
        return agents

    @property
    def roles(self) -> list[str]:
        """The roster's roles, in seat order."""
        return [a.role if isinstance(a, Seat) else a for a in self.agents]

    def seat_models(self) -> list[str]:
        """Per seat, the key of the model it runs on ("" = the experiment's model)."""
        adapter = self.backend.adapter
        return [a.key(self.model, adapter) if isinstance(a, Seat) else "" for a in self.agents]

    def seat_backends(self) -> dict[str, tuple[str, BackendOptions]]:
        """Model key -> (model string, backend options) for every seat with its own model."""
        out: dict[str, tuple[str, BackendOptions]] = {}
        for entry, key in zip(self.agents, self.seat_models()):
            if key and isinstance(entry, Seat):
                options = self.backend.model_copy(update={"adapter": entry.adapter or self.backend.adapter})
                out[key] = (entry.model or self.model, options)
        return out

    @model_validator(mode="after")
    def _unique_topics(self) -> "ExperimentConfig":
        ids = [t if isinstance(t, str) else t.id for t in self.topics]
        if len(ids) != len(set(ids)):
            raise ValueError("topics must not repeat")
        return self

    def resolved_topics(self) -> list[Topic]:
        known = dict(BUILTIN_TOPICS)
        for path in self.topic_files:
            known.update({t.id: t for t in load_topic_file(path)})
        out = []
        for item in self.topics:
            if isinstance(item, Topic):
                out.append(item)
            elif item in known:
                out.append(known[item])
            else:
                raise DebatelabError(f"unknown topic {item!r} (known: {', '.join(sorted(known))})")
        return out

    def fingerprint(self, *extra: object) -> str:
        """Hash of everything that shapes results: the config (less labels and runtime knobs such
        as batch size or concurrency, which a user may change when resuming), the resolved
        topics' wording, and any ``extra`` content (persona bank, template version)."""
        payload = self.model_dump(mode="json", exclude={"name", "max_in_flight", "topic_files", "executor"})
        payload["backend"] = {k: v for k, v in payload["backend"].items() if k not in RUNTIME_BACKEND_FIELDS}
        payload["resolved_topics"] = [t.model_dump(mode="json") for t in self.resolved_topics()]
        payload["extra"] = [str(e) for e in extra]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Backend options that change speed or credentials, not results; excluded from the run fingerprint.
RUNTIME_BACKEND_FIELDS = frozenset({"batch_size", "threads", "concurrency", "timeout", "max_retries",
                                    "retry_budget", "retry_backoff", "api_key_env", "api_key_file",
                                    "prefix_cache_mb"})


_UNION_TAGS = {"str", "Topic", "Seat", "int", "float", "bool", "none"}


def _first_error(exc: ValidationError) -> str:
    # In a union (a topic id or an inline topic) the deepest error is the informative one.
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    where = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def load_config(path: Path, **overrides: object) -> ExperimentConfig:
    """Read a YAML config, apply CLI overrides (None = keep), resolve relative paths, validate."""
    data = read_yaml(path, "config file")
    if not isinstance(data, dict):
        raise DebatelabError(f"config {path} must be a YAML mapping of keys to values")
    adapter = overrides.pop("adapter", None)
    executor = overrides.pop("executor", None)
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
    if isinstance(data.get("topic_files"), list):
        data["topic_files"] = [str(base / Path(p).expanduser()) if isinstance(p, str) and p.strip() else p
                               for p in data["topic_files"]]
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise DebatelabError(f"invalid config {path}: {_first_error(exc)}") from None
    config.resolved_topics()  # unknown topic ids fail now, not mid-run
    return config
