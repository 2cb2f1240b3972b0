"""The mitigation lab's config: base experiments, and the methods that change their partisans.

Every method is applied to every partisan seat of every experiment (the Default agent stays on the
base model, as it shows the model's own bias), on the same personas, seeds and topics as the
baseline, which always runs. A method may combine a model, party adapters, contrastive decoding,
steering and re-anchoring; each is a :class:`~debatelab.config_schema.Seat` option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, ValidationError, field_validator

from ..config import MAX_REPETITIONS, MAX_ROUNDS, ExperimentConfig, Seat, check_path, load_config
from ..config_schema import Measure
from ..errors import DebatelabError
from ..methods import Contrastive, Steering
from ..readers import read_yaml
from ..society.config import SocietyConfig
from ..types import Party
from ..validation import StrictModel, describe

BASELINE = "baseline"
MAX_METHODS = 32
MAX_EXPERIMENTS = 16
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class LabMethod(StrictModel):
    """What a method changes for every partisan seat; an empty method is the baseline again."""

    model: str | None = Field(None, min_length=1, max_length=1_000)
    """Partisans run on this model instead (e.g. a larger model, or ``opinion-sim:pull=0.05`` as a
    known-answer stand-in for a method); None: the experiment's."""
    adapters: dict[Party, str] | None = None
    """Party -> LoRA adapter folder (relative to the lab file), e.g. from a ``party: both``
    study: each partisan on its own party's adapter."""
    contrastive: Contrastive | None = None
    """Persona-contrastive decoding (:class:`debatelab.methods.Contrastive`)."""
    steering: Steering | None = None
    """Activation steering (:class:`debatelab.methods.Steering`)."""
    reanchor: int = Field(0, ge=0, le=MAX_ROUNDS, strict=True)
    """Re-anchoring: every k-th reply after the first restates the opening statement (0: off)."""

    @field_validator("adapters")
    @classmethod
    def _paths(cls, adapters: dict[str, str] | None) -> dict[str, str] | None:
        for path in (adapters or {}).values():
            check_path(path)
        return adapters

    def seat(self, entry: str | Seat) -> str | Seat:
        """The roster entry under this method (a default seat unchanged)."""
        seat = entry if isinstance(entry, Seat) else Seat(role=entry)
        if seat.role == "default":
            return entry
        adapter = (self.adapters or {}).get(seat.role)  # type: ignore[call-overload]
        return seat.model_copy(update={
            "model": self.model or seat.model, "adapter": adapter or seat.adapter,
            "contrastive": self.contrastive or seat.contrastive, "steering": self.steering or seat.steering,
            "reanchor": self.reanchor or seat.reanchor})


class LabConfig(StrictModel):
    name: str | None = Field(None, min_length=1, max_length=255)
    """Label (default: the lab file's stem)."""
    experiments: list[Path] = Field(min_length=1, max_length=MAX_EXPERIMENTS)
    """Experiment configs (relative to the lab file), e.g. the three-way debate for convergence
    and the attractor pull, and echo chambers for the echo-chamber index; at most 16."""
    methods: dict[Slug, LabMethod] = Field(min_length=1, max_length=MAX_METHODS)
    """Name -> method, 1..32 (lower-case letters, digits, ``_``, ``-``); the baseline runs too."""
    model: str | None = Field(None, min_length=1, max_length=1_000)
    """Run every experiment on this model (None: each experiment's own; they must agree)."""
    repetitions: int | None = Field(None, ge=1, le=MAX_REPETITIONS, strict=True)
    """Debates per topic in every experiment (None: each experiment's own)."""
    topics: list[str] | None = Field(None, min_length=1, max_length=64)
    """Topic ids for every experiment (None: each experiment's own)."""
    rounds: int | None = Field(None, ge=1, le=MAX_ROUNDS, strict=True)
    """Round-robin cycles in every experiment (None: each experiment's own)."""
    measure: Measure | None = None
    """The attitude every metric reads: ``greedy`` (the paper's T=0 answer), ``expected`` (the
    0..10 distribution's mean), or None: each experiment's own (greedy by default). Analysis
    only: it changes no run."""
    personas: Path | None = None
    """A persona bank shared by every run; None: one is generated with the model into the output
    folder (``personas.jsonl``) and shared."""
    judge: bool = True
    """Score every reply's stance with the base model (survey-behaviour consistency)."""
    perplexity: bool = True
    """Reply perplexity under the base model (transformers backends; skipped elsewhere)."""
    seed: int = Field(0, ge=0, lt=2**32, strict=True)
    """Bootstrap seed of the intervals."""
    n_boot: int = Field(1000, ge=100, le=100_000, strict=True)
    """Bootstrap resamples per interval, 100..100,000."""

    @field_validator("methods")
    @classmethod
    def _no_second_baseline(cls, methods: dict[str, LabMethod]) -> dict[str, LabMethod]:
        if BASELINE in methods:
            raise ValueError(f"{BASELINE!r} always runs (the experiments as they are); name the methods otherwise")
        return methods

    def method_names(self) -> list[str]:
        return [BASELINE, *self.methods]


def load_lab(path: Path) -> LabConfig:
    """Read and validate a lab file; relative paths resolve against it."""
    data = read_yaml(path, "lab file")
    if not isinstance(data, dict):
        raise DebatelabError(f"lab file {path} must be a YAML mapping of keys to values")
    base = path.resolve().parent
    data.setdefault("name", path.stem)
    for key in ("personas",):
        if isinstance(data.get(key), str) and data[key].strip():
            data[key] = str(base / Path(data[key]).expanduser())
    if isinstance(data.get("experiments"), list):
        data["experiments"] = [str(base / Path(p).expanduser()) if isinstance(p, str) and p.strip() else p
                               for p in data["experiments"]]
    for method in (data.get("methods") or {}).values() if isinstance(data.get("methods"), dict) else ():
        if isinstance(method, dict) and isinstance(method.get("adapters"), dict):
            method["adapters"] = {k: str(base / Path(v).expanduser()) if isinstance(v, str) and v.strip() else v
                                  for k, v in method["adapters"].items()}
    try:
        return LabConfig.model_validate(data)
    except ValidationError as exc:
        raise DebatelabError(f"invalid lab file {path}: {describe(exc)}") from None


def method_configs(lab: LabConfig, bank: Path) -> dict[str, list[ExperimentConfig]]:
    """Method -> its experiment configs, every one validated now (a bad method fails before any run)."""
    overrides = {"model": lab.model, "repetitions": lab.repetitions, "topics": lab.topics, "rounds": lab.rounds,
                 "personas": str(bank)}
    bases = []
    for path in lab.experiments:
        if not path.is_file():
            raise DebatelabError(f"lab: experiment config not found: {path}")
        config = load_config(path, **overrides)
        if lab.measure is not None:
            config = config.model_copy(update={"survey": config.survey.model_copy(update={"measure": lab.measure})})
        if isinstance(config, SocietyConfig):
            raise DebatelabError(f"lab: {path.name} is a society; the lab compares debate experiments")
        bases.append(config)
    if len({(c.model, c.backend.model_dump_json()) for c in bases}) > 1:
        raise DebatelabError("lab: the experiments run on different models or backend options; set the lab's model:")
    if len({c.name for c in bases}) < len(bases):
        raise DebatelabError("lab: two experiments have the same name; each needs its own run folder")
    return {name: [_apply(config, name, method) for config in bases]
            for name, method in [(BASELINE, LabMethod()), *lab.methods.items()]}


def _apply(config: ExperimentConfig, name: str, method: LabMethod) -> ExperimentConfig:
    data = config.model_dump()
    data["agents"] = [method.seat(entry) for entry in config.agents]
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise DebatelabError(f"lab: method {name!r} on {config.name}: {describe(exc)}") from None
