"""The whole self-fine-tuning study (paper §5, §7, appendix A.2), resumable step by step:

questions -> a partisan agent's answers (and the other party's, for DPO) -> SFT adapters per rank
and seed -> DPO adapters per rank and seed -> the same debate experiment on the base model and on
every adapter -> before/after figures (solid before, dotted after, seeds pooled) -> benchmarks ->
Table 1 (``table1``).

Every step writes its output atomically and is skipped when that output exists (adapters count
as done once their manifest is written; debate runs resume on their own), so re-running the
same command after an interruption continues where it stopped. The config is in ``study_config``.

One study per folder: the study folder is locked (``store.lock_run_dir``) before any model loads
and for the whole study, so a second ``debatelab study`` on the same ``--out`` is refused at once.
Its debate runs lie in subfolders (``debates/<name>``), each locked by ``run_experiment`` itself;
the locks are on different files, so they nest.

Every debate, before and after tuning, runs on the study's ``backend`` (over the experiment's own
backend options), so the base model and the adapters are held the same way (e.g. 8-bit).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..config import ExperimentConfig, load_config
from ..errors import DebatelabError
from .study_config import StudyConfig, check_files, load_study
from .table1 import TableRow, table_rows, write_table

__all__ = ["StudyConfig", "Variant", "load_study", "run_study"]

OTHER = {"republican": "democrat", "democrat": "republican"}


@dataclass(frozen=True)
class Variant:
    """One tuned model of Table 1: a method at a LoRA rank, one adapter folder per seed."""

    method: str  # "SFT" | "SFT+DPO"
    r: int
    adapters: tuple[Path, ...]

    @property
    def slug(self) -> str:
        return f"{self.method.lower().replace('+', '_')}_r{self.r}"


def run_study(study: StudyConfig, out: Path, progress: bool = False) -> Path:
    """Run (or resume) every step into ``out``; returns the path of ``table1.csv``.

    ``out`` is locked for the whole study, before any model loads: a second study on the same
    folder is refused (one line, "... is in use by another debatelab process")."""
    from ..store import lock_run_dir

    check_files(study)
    lock = lock_run_dir(out)  # creates ``out``
    try:
        return _run_locked(study, out, progress)
    finally:
        lock.release()


def _run_locked(study: StudyConfig, out: Path, progress: bool) -> Path:
    from ..llm.registry import load_llm

    cache: dict[str, Any] = {}

    def base_llm() -> Any:
        if "llm" not in cache:  # loaded once, on first use (not by setdefault, which loads every call)
            cache["llm"] = load_llm(study.model, study.backend)
        return cache["llm"]

    with _timed("personas"):
        bank_path = _bank(study, out, base_llm)
    with _timed("questions"):
        questions = _questions(study, out, base_llm)
    with _timed("answers"):
        data = _answers(study, out, base_llm, bank_path, questions)
    _release(cache)  # the trainers load their own copy of the base model
    with _timed("fine-tuning"):
        variants = _train(study, out, data)
    with _timed("debates"):
        runs = _debates(study, out, bank_path, variants, progress)
    with _timed("figures"):
        _figures(out, variants, runs)
    with _timed("benchmarks"):
        scores = _benchmarks(study, out, variants)
    return _table1(study, out, variants, runs, scores)


def _release(cache: dict[str, Any]) -> None:
    """Drop the generation model, so that a GPU holds one copy of the base model at a time."""
    if cache.pop("llm", None) is not None:
        import gc

        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


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


def _train(study: StudyConfig, out: Path, data: dict[str, Path]) -> list[Variant]:
    """Every SFT rank, then DPO on the SFT adapters of the DPO ranks, each once per seed; an
    adapter folder with a manifest is done."""
    from .dpo import train_dpo
    from .sft import train_sft

    variants = []
    for r in study.sft_ranks():
        dirs = []
        for seed in study.seeds:
            folder = out / "adapters" / f"sft-r{r}-seed{seed}"
            if not (folder / "manifest.json").exists():
                train_sft(study.model, data[study.party], folder,
                          study.sft.model_copy(update={"r": r, "seed": seed}), overwrite=True)
            dirs.append(folder)
        variants.append(Variant("SFT", r, tuple(dirs)))
    dpo = study.dpo
    for r in study.dpo_ranks():  # empty without a dpo section
        assert dpo is not None
        dirs = []
        for seed in study.seeds:
            folder, parent = out / "adapters" / f"dpo-r{r}-seed{seed}", out / "adapters" / f"sft-r{r}-seed{seed}"
            if not (folder / "manifest.json").exists():
                train_dpo(study.model, parent, data["pairs"], folder, dpo.model_copy(update={"seed": seed}),
                          overwrite=True)
            dirs.append(folder)
        variants.append(Variant("SFT+DPO", r, tuple(dirs)))
    return variants


def debate_config(study: StudyConfig, bank_path: Path, adapter: Path | None = None) -> ExperimentConfig:
    """The study's experiment on its model, with its personas and repetitions, on the base model or
    an adapter; the backend is the experiment's with the study's ``backend`` fields over it, the
    same for every debate before and after tuning."""
    common = {"model": study.model, "repetitions": study.repetitions, "personas": str(Path(bank_path).resolve())}
    experiment = load_config(study.experiment, **common)
    backend = {**experiment.backend.model_dump(exclude_unset=True), **study.backend.model_dump(exclude_unset=True)}
    return load_config(study.experiment, **common, backend=backend or None, adapter=adapter)


def _debates(study: StudyConfig, out: Path, bank_path: Path, variants: list[Variant],
             progress: bool) -> dict[str, Path]:
    """The same experiment, with the same personas and backend, on the base model and on every
    adapter; {"base" or adapter folder name: run folder}. Each run loads its model itself, after
    locking its folder."""
    from ..experiment import run_experiment

    runs = {"base": out / "debates" / "base"}
    run_experiment(debate_config(study, bank_path), runs["base"], progress=progress)
    for adapter in (a for v in variants for a in v.adapters):
        runs[adapter.name] = out / "debates" / adapter.name
        run_experiment(debate_config(study, bank_path, adapter), runs[adapter.name], progress=progress)
    return runs


def _figures(out: Path, variants: list[Variant], runs: dict[str, Path]) -> None:
    """Paper Figures 6/11/12, one per variant: before solid, after dotted (its seeds pooled)."""
    from ..analysis.figures import attitude_figure, save_figure
    from ..analysis.frames import load, merge_runs

    before = load(runs["base"], complete_only=True)
    for v in variants:
        label = f"{v.method} r={v.r}"
        after = merge_runs([load(runs[a.name], complete_only=True) for a in v.adapters], f"after {label}")
        fig = attitude_figure([before, after], labels=["before", f"after {label} (seeds pooled)"])
        save_figure(fig, out / "figures" / f"before_after_{v.slug}")


def _benchmarks(study: StudyConfig, out: Path, variants: list[Variant]) -> dict[str, dict[str, Any]]:
    """lm-eval scores per model ("base", "sft-r16-seed0", ..., "compare-<n>"), cached as JSON files."""
    b = study.benchmarks
    tasks = {name: path for name, path in (("mmlu", b.mmlu), ("hellaswag", b.hellaswag)) if path is not None}
    if not tasks:
        return {}
    models = [("base", study.model, None)] + [(a.name, study.model, a) for v in variants for a in v.adapters]
    models += [(f"compare-{i}", model, None) for i, model in enumerate(b.compare)]
    return {name: _scores(study, out / "benchmarks" / f"{name}.json", model, adapter, tasks)
            for name, model, adapter in models}


def _scores(study: StudyConfig, path: Path, model: str, adapter: Path | None, tasks: dict[str, Path]) -> Any:
    import json

    from ..files import atomic_open
    from .benchmarks import evaluate

    if not path.exists():
        result = evaluate(model, str(adapter) if adapter else None, tasks, limit=study.benchmarks.limit,
                          batch_size=study.benchmarks.batch_size, device=study.backend.device)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            json.dump(result, fh, indent=2, default=str)
    return json.loads(path.read_text(encoding="utf-8"))


def _table1(study: StudyConfig, out: Path, variants: list[Variant], runs: dict[str, Path],
            scores: dict[str, dict[str, Any]]) -> Path:
    """Paper Table 1 (``table1.csv`` and ``table1.md``): base, every variant, comparison models."""
    from ..analysis.frames import load

    rows = [TableRow(study.model, "base", None, ("base",))]
    rows += [TableRow(study.model, v.method, v.r, tuple(a.name for a in v.adapters)) for v in variants]
    rows += [TableRow(model, "reference", None, (f"compare-{i}",)) for i, model in enumerate(study.benchmarks.compare)]
    attitudes = {name: default_final(load(run, complete_only=True), study.table_topic) for name, run in runs.items()}
    return write_table(table_rows(rows, scores, attitudes, study.table_topic), study.table_topic, out)


def default_final(run: Any, topic: str) -> float:
    """The Default agent's mean survey value at the last iteration of the debates on ``topic``."""
    surveys = run.surveys[(run.surveys["role"] == "default") & (run.surveys["topic"] == topic)]
    if surveys.empty:
        return float("nan")  # the experiment has no Default agent on this topic
    return float(surveys[surveys["iteration"] == surveys["iteration"].max()]["value"].mean())
