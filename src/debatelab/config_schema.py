"""Experiment configuration: the pydantic models (unknown keys rejected); :mod:`debatelab.config` loads them from YAML."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from .errors import DebatelabError
from .llm.options import BackendOptions
from .llm.registry import split_model
from .methods import Contrastive, Steering
from .scales import SCALES, Scale, ScaleId
from .topics import BUILTIN_TOPICS, Topic, load_topic_file
from .types import ROLES
from .validation import StrictModel


# Upper bounds on every size a user types, each far above the paper (3 rounds, 40 repetitions,
# 40 personas per party, 3 agents, 4 topics, replies of about 100 tokens) but low enough that no
# config can allocate unbounded memory or run for ever before its first debate.
MAX_ROUNDS = 100
MAX_REPETITIONS = 10_000
MAX_AGENTS = 64
MAX_TOPICS = 1_000
MAX_TOPIC_FILES = 100
MAX_TOKENS = 8_192
MAX_IN_FLIGHT = 4_096
MAX_PER_PARTY = 10_000
MAX_ATTEMPTS = 100
MAX_WORKERS = 1_024
MAX_REPLIES_PER_DEBATE = 1_000
"""rounds x agents: every prompt repeats the whole history, so a debate's work grows with its square."""
MAX_DEBATES = 100_000
"""topics x repetitions planned by one run (the paper's experiments plan 160)."""
MAX_REPLIES = 10_000_000
"""debates x rounds x agents: replies planned by one run (the paper's experiments plan 1,440)."""
MAX_NAME = 255  # a file name (the default name is the config file's stem)
MAX_MODEL = 1_000
MAX_PATH = 4_096
SEED_RANGE = 2**63
"""Seeds lie in [-2**63, 2**63)."""


def check_path(value: object) -> object:
    """Paths (str) must be non-empty, short enough for a file system, and free of NUL bytes."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("a path must not be empty")
        if "\x00" in value:
            raise ValueError("a path must not contain a NUL byte")
        if len(value) > MAX_PATH:
            raise ValueError(f"a path must not be longer than {MAX_PATH} characters")
    return value


MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0
"""Sampling temperatures are 0 (greedy) or in [1e-3, 100]: dividing logits by a smaller one
overflows to inf/nan and crashes sampling mid-run."""


def _check_temperature(value: float) -> float:
    if value != 0 and not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(f"a temperature must be 0 (greedy) or between {MIN_TEMPERATURE:g} and "
                         f"{MAX_TEMPERATURE:g}, not {value:g}")
    return value


Temperature = Annotated[float, Field(ge=0, strict=True), AfterValidator(_check_temperature)]


class ReplyConfig(StrictModel):
    temperature: Temperature = 1.0
    """Sampling temperature of debate replies (paper: 1.0); 0 or 1e-3..100."""
    max_tokens: int = Field(96, ge=1, le=MAX_TOKENS, strict=True)
    """Longest reply in tokens, 1..8,192."""
    top_p: float = Field(1.0, gt=0, le=1, strict=True)
    """Nucleus sampling mass in (0, 1] (1.0 = off)."""


Measure = Literal["greedy", "expected"]


class SurveyConfig(StrictModel):
    method: Literal["both", "generate", "logprobs"] = "both"
    """What each survey records. ``both`` (default): the paper's greedy T=0 answer, parsed as an
    integer (invalid when it is not one), and, from the same prompt, the distribution over 0..10
    (option scoring). ``generate``: the greedy answer only. ``logprobs``: the distribution only."""
    measure: Measure | None = None
    """The attitude every figure, metric and report uses. ``greedy``: the parsed T=0 answer, as in
    the paper (§4.3). ``expected``: the expected score of the distribution renormalised over 0..10.
    None (default): ``greedy`` whenever the method records it, else ``expected``. An analysis-only
    choice: it is not part of the run fingerprint, and ``report --measure`` overrides it."""
    max_tokens: int = Field(8, ge=1, le=64, strict=True)
    """Longest generated survey answer (``both`` and ``generate``), 1..64 (an answer is one number)."""
    scale: ScaleId = "0-10"
    """The question asked. ``0-10`` (default): the paper's severity rating on the topic's 0-10
    scale. ``pew4``: Pew's own 4-point item, the question humans answered in June 2023 ("How much
    of a problem ... in the country today?": a very big / moderately big / small problem / not a
    problem at all), stored as scores 0..3 (3 = a very big problem) with the distribution over
    the four answers."""

    @model_validator(mode="after")
    def _measure_recorded(self) -> "SurveyConfig":
        if self.measure is not None and self.measure not in measures_of(self.method):
            raise ValueError(f"measure {self.measure!r} is not recorded by survey method {self.method!r}")
        return self

    def identity(self) -> dict[str, object]:
        """What shapes the answers (debate ids and the run fingerprint hash it): the measure
        only chooses what analyses read, and the default scale is left out so that runs made
        before scales existed keep their ids."""
        return self.model_dump(mode="json", exclude={"measure"} | ({"scale"} if self.scale == "0-10" else set()))

    @property
    def scale_spec(self) -> Scale:
        return SCALES[self.scale]

    @property
    def resolved_measure(self) -> Measure:
        return self.measure or measures_of(self.method)[0]

    @property
    def records_greedy(self) -> bool:
        """Each survey sends a greedy T=0 generate request (the paper's measure)."""
        return "greedy" in measures_of(self.method)

    @property
    def records_distribution(self) -> bool:
        """Each survey sends an option-scoring request (the 0..10 distribution)."""
        return "expected" in measures_of(self.method)


def measures_of(method: str) -> tuple[Measure, ...]:
    """The measures a survey method records, the paper's first."""
    return {"both": ("greedy", "expected"), "generate": ("greedy",), "logprobs": ("expected",)}[method]  # type: ignore[return-value]


class PersonaGeneration(StrictModel):
    per_party: int | None = Field(None, ge=1, le=MAX_PER_PARTY, strict=True)
    """Personas per party when the run generates its own bank, 1..10,000 (None = as many as the
    roster needs; the built-in name list caps a generated bank further)."""
    temperature: Temperature = 1.0
    """Sampling temperature of background stories (paper: 1.0); 0 or 1e-3..100."""
    max_tokens: int = Field(200, ge=16, le=MAX_TOKENS, strict=True)
    """Longest background story in tokens, 16..8,192."""
    min_words: int = Field(25, ge=1, le=MAX_TOKENS, strict=True)
    """Shorter outputs count as malformed and are regenerated; at most ``max_tokens`` (a story
    of N words takes at least N tokens)."""
    max_attempts: int = Field(4, ge=1, le=MAX_ATTEMPTS, strict=True)
    """Generation attempts per persona before the run stops with an error, 1..100."""

    @model_validator(mode="after")
    def _words_fit(self) -> "PersonaGeneration":
        if self.min_words > self.max_tokens:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_tokens ({self.max_tokens}): "
                             "no story could be long enough")
        return self


class ExecutorConfig(StrictModel):
    kind: Literal["local", "ray"] = "local"
    """``local``: waves in this process. ``ray``: debates sharded across Ray workers, each with its
    own backend, every wave streamed back to this process, the run's single SQLite writer."""
    address: str | None = Field(None, min_length=1, max_length=MAX_MODEL)
    """Ray cluster address (e.g. ``auto`` or ``ray://head:10001``); None starts a local Ray instance."""
    workers: int = Field(2, ge=1, le=MAX_WORKERS, strict=True)
    """Ray workers (actors), 1..1,024; each loads its own backend and runs its shard of debates in waves."""
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, strict=True)
    """CPUs Ray reserves for each worker, at most 1,024."""
    gpus_per_worker: float = Field(0.0, ge=0, le=64, strict=True)
    """GPUs Ray reserves for each worker, at most 64 (e.g. 1 for a vllm: or hf: model on CUDA)."""


class Seat(StrictModel):
    """A roster entry with its own model: ``{role: republican, model: hf:org/x, adapter: dir}``."""

    role: str
    """republican, democrat or default."""
    model: str | None = Field(None, max_length=MAX_MODEL)
    """Model string for this agent (None = the experiment's ``model``)."""
    adapter: str | None = None
    """LoRA adapter folder for this agent (None = the experiment's ``backend.adapter``)."""
    contrastive: Contrastive | None = None
    """Persona-contrastive decoding for this agent (see :mod:`debatelab.methods`); partisans on
    a transformers backend only."""
    steering: Steering | None = None
    """Activation steering towards this agent's party (see :mod:`debatelab.methods`); partisans
    on a transformers backend only, with a persona bank (``personas:``) to compute it from."""
    reanchor: int = Field(0, ge=0, le=MAX_ROUNDS, strict=True)
    """Every k-th of this agent's replies after its first restates its opening statement in its
    reply prompt, 0..100 (0 = never); any backend."""

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_path(cls, value: object) -> object:
        return check_path(value)

    @property
    def intervenes(self) -> bool:
        """Whether the seat's backend computes differently (contrastive decoding or steering)."""
        return self.contrastive is not None or self.steering is not None

    def key(self, default_model: str, default_adapter: str | None) -> str:
        """The model this seat runs on, as one string; "" when it is the experiment's own.
        A backend method joins the key (``#contrastive(1,replies)``), so a seat with one is
        always a backend of its own, and re-anchoring, which only changes prompts, does not."""
        model, adapter = self.model or default_model, self.adapter or default_adapter
        methods = (f"#{self.contrastive.key()}" if self.contrastive else "") + \
            (f"#{self.steering.key(self.role)}" if self.steering else "")
        if (model, adapter) == (default_model, default_adapter) and not methods:
            return ""
        return (model if adapter is None else f"{model}+{adapter}") + methods


class ExperimentConfig(StrictModel):
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    """Label stored with the run (defaults to the config file's stem), at most 255 characters, on one line."""
    model: str = Field("embedded", max_length=MAX_MODEL)
    """Model string: embedded | hf:<hub id or dir> | openai:<model> | scripted."""
    backend: BackendOptions = BackendOptions()
    """Backend options (dtype, batch size, base URL, concurrency, ...)."""
    topics: list[Annotated[str, Field(max_length=64)] | Topic] = Field(min_length=1, max_length=MAX_TOPICS)
    """Built-in topic ids, ids from ``topic_files``, or inline mappings (id, name, question); 1..1,000."""
    topic_files: list[Path] = Field([], max_length=MAX_TOPIC_FILES)
    """YAML files of extra topics (paths relative to the config file), at most 100."""
    agents: list[str | Seat] = Field(min_length=2, max_length=MAX_AGENTS)
    """The roster, e.g. [republican, democrat, default]; parties may repeat; 2..64 agents. An entry
    may be a mapping that gives the agent its own model and/or adapter (see :class:`Seat`)."""
    rounds: int = Field(3, ge=1, le=MAX_ROUNDS, strict=True)
    """Round-robin cycles, 1..100; a debate has rounds x len(agents) replies, at most 1,000."""
    repetitions: int = Field(1, ge=1, le=MAX_REPETITIONS, strict=True)
    """Debates per topic, each with a different persona combination, 1..10,000; a run plans at most
    100,000 debates (topics x repetitions) and 10,000,000 replies."""
    seed: int = Field(0, ge=-SEED_RANGE, lt=SEED_RANGE, strict=True)
    """Master seed in [-2**63, 2**63): first speakers, persona draws and every sampling seed derive from it."""
    personas: Path | None = None
    """Persona bank (JSONL). When absent, the run generates one with its own model."""
    persona_generation: PersonaGeneration = PersonaGeneration()
    """How a run without a bank generates personas."""
    reply: ReplyConfig = ReplyConfig()
    """Debate reply sampling."""
    survey: SurveyConfig = SurveyConfig()
    """Attitude survey method."""
    max_in_flight: int = Field(64, ge=1, le=MAX_IN_FLIGHT, strict=True)
    """Debates advanced together in one wave (the backend batches their requests), 1..4,096; per worker under Ray."""
    admission: Literal["staggered", "together"] = "staggered"
    """How debates enter the waves. ``staggered``: about max_in_flight / (steps of a debate) new
    debates per wave, so those in flight are at every stage, a finished debate is replaced a wave
    later and memory stays flat; ``together``: every free place filled at once (debates then move
    in lockstep groups of max_in_flight, as earlier releases did). A runtime choice: results agree at
    ``debatelab.compare.PRECISION``."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where waves run: in this process, or across a Ray cluster (a runtime choice; results are the same)."""

    @field_validator("personas", "topic_files", mode="before")
    @classmethod
    def _no_empty_paths(cls, value: object) -> object:
        for item in value if isinstance(value, list) else [value]:
            check_path(item)
        return value

    @field_validator("name")
    @classmethod
    def _one_line_name(cls, name: str | None) -> str | None:
        if name is not None and (not name.strip() or not name.isprintable()):
            raise ValueError("must be printable text on one line")
        return name

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        try:
            split_model(model)
        except DebatelabError as exc:
            raise ValueError(str(exc)) from None
        return model

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

    @model_validator(mode="after")
    def _seat_methods(self) -> "ExperimentConfig":
        for entry in self.agents:
            if not isinstance(entry, Seat) or not entry.intervenes:
                continue
            kind = split_model(entry.model or self.model)[0]
            if kind not in ("embedded", "hf"):
                raise ValueError(f"contrastive decoding and steering need a transformers model (embedded or hf:), "
                                 f"not {entry.model or self.model!r}")
            if entry.role == "default":
                raise ValueError("contrastive decoding and steering act on a persona: a default seat has none")
            if entry.steering is not None and self.personas is None:
                raise ValueError("steering needs a persona bank (personas:), the prompts its direction is computed from")
        return self

    @property
    def roles(self) -> list[str]:
        """The roster's roles, in seat order."""
        return [a.role if isinstance(a, Seat) else a for a in self.agents]

    def seat_models(self) -> list[str]:
        """Per seat, the key of the model it runs on ("" = the experiment's model)."""
        adapter = self.backend.adapter
        return [a.key(self.model, adapter) if isinstance(a, Seat) else "" for a in self.agents]

    def seat_reanchors(self) -> list[int]:
        """Per seat, how often its opening statement is restated (0: never)."""
        return [a.reanchor if isinstance(a, Seat) else 0 for a in self.agents]

    def seat_methods(self) -> dict[str, Seat]:
        """Model key -> the seat that asks for contrastive decoding or steering on it."""
        return {key: entry for entry, key in zip(self.agents, self.seat_models())
                if isinstance(entry, Seat) and entry.intervenes}

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

    @model_validator(mode="after")
    def _bounded_work(self) -> "ExperimentConfig":
        per_debate = self.rounds * len(self.agents)
        debates = len(self.topics) * self.repetitions
        if per_debate > MAX_REPLIES_PER_DEBATE:
            raise ValueError(f"rounds x agents = {per_debate:,} replies per debate; at most "
                             f"{MAX_REPLIES_PER_DEBATE:,} (use fewer rounds or agents)")
        if debates > MAX_DEBATES:
            raise ValueError(f"topics x repetitions = {debates:,} debates; at most {MAX_DEBATES:,} in one run "
                             "(split it into several runs)")
        if debates * per_debate > MAX_REPLIES:
            raise ValueError(f"the run plans {debates * per_debate:,} replies (debates x rounds x agents); at most "
                             f"{MAX_REPLIES:,} in one run (split it into several runs)")
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
        payload = self.model_dump(mode="json", exclude={"name", "max_in_flight", "admission", "topic_files", "executor"})
        payload["survey"] = self.survey.identity()  # the measure is analysis-only
        payload["backend"] = {k: v for k, v in payload["backend"].items() if k not in RUNTIME_BACKEND_FIELDS
                              and not (k in LATER_BACKEND_FIELDS and v == LATER_BACKEND_FIELDS[k])}
        payload["resolved_topics"] = [t.model_dump(mode="json") for t in self.resolved_topics()]
        payload["extra"] = [str(e) for e in extra]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Backend options that change speed or credentials, not results; excluded from the run fingerprint.
RUNTIME_BACKEND_FIELDS = frozenset({"batch_size", "threads", "concurrency", "timeout", "max_retries", "retry_budget",
                                    "retry_backoff", "api_key_env", "api_key_file", "prefix_cache_mb"})

# Backend options added after runs existed, left out of the fingerprint at their defaults, so a
# run made before them still resumes (what they change shows in the model identity anyway).
LATER_BACKEND_FIELDS: dict[str, object] = {"logprobs_cap": None, "chat_template": "auto", "tokenizer": None,
                                           "chat_prefill": "instruction"}
