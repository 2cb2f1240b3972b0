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

``party: both`` (see ``parties``) shares the questions between the two parties: each party's agent
answers them, each party's adapters train into ``adapters/<party>/`` (DPO: that party's answers
chosen, the other's rejected), and each "after" debate run (one per method, rank and seed, named
like the adapters: ``debates/sft-r16-seed0``) seats every Republican on the Republican adapter of
that seed and every Democrat on the Democrat one, the Default agent on the base model. Its
figures compare the base run with those runs; Table 1 has one row per party, method and rank
(benchmarks of that party's adapters; the Default attitude of the shared runs).
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
from .parties import BOTH, OTHER, PARTIES, adapter_dir, party_adapter_seats, seat_parties
from .study_config import StudyConfig, check_files, load_study
from .table1 import TableRow, table_rows, write_table

__all__ = ["StudyConfig", "Variant", "load_study", "party_adapter_seats", "run_study"]


@dataclass(frozen=True)
class Variant:
    """One tuned model of Table 1: a method at a LoRA rank, one adapter folder per seed."""

    method: str  # "SFT" | "SFT+DPO"
    r: int
    adapters: tuple[Path, ...]
    party: str | None = None  # whose adapters, in a party: both study

    @property
    def slug(self) -> str:
        return f"{self.method.lower().replace('+', '_')}_r{self.r}"

    @property
    def names(self) -> tuple[str, ...]:
        """The adapters' model names (benchmark files, Table 1 members): the folder name, after its
        party in a two-party study, whose two parties' folders share names."""
        return tuple(a.name if self.party is None else f"{self.party}-{a.name}" for a in self.adapters)


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
        for party in PARTIES:  # the tuned party, and the other one for DPO's rejected answers
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
    # Every tuned party answers; DPO also needs the other party's answers to reject.
    parties = list(dict.fromkeys([*study.parties(), *(PARTIES if study.dpo is not None else ())]))
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
    for party in study.parties() if study.dpo is not None else ():
        name = "dpo_pairs.jsonl" if study.party != BOTH else f"dpo_pairs_{party}.jsonl"
        pairs = paths[f"pairs:{party}"] = out / "answers" / name
        if not pairs.exists():
            save_jsonl(dpo_pairs(load_jsonl(paths[party]), load_jsonl(paths[OTHER[party]])), pairs)
    return paths


def _train(study: StudyConfig, out: Path, data: dict[str, Path]) -> list[Variant]:
    """Per tuned party: every SFT rank, then DPO on the SFT adapters of the DPO ranks, each once
    per seed; an adapter folder with a manifest is done."""
    from .dpo import train_dpo
    from .sft import train_sft

    variants = []
    for party in study.parties():
        tag = party if study.party == BOTH else None  # a one-party study keeps its folder names
        for r in study.sft_ranks():
            dirs = tuple(adapter_dir(out, tag, "sft", r, seed) for seed in study.seeds)
            for seed, folder in zip(study.seeds, dirs):
                if not (folder / "manifest.json").exists():
                    train_sft(study.model, data[party], folder,
                              study.sft.model_copy(update={"r": r, "seed": seed}), overwrite=True)
            variants.append(Variant("SFT", r, dirs, tag))
        for r in study.dpo_ranks():  # empty without a dpo section
            assert study.dpo is not None
            dirs = tuple(adapter_dir(out, tag, "dpo", r, seed) for seed in study.seeds)
            for seed, folder in zip(study.seeds, dirs):
                if not (folder / "manifest.json").exists():
                    train_dpo(study.model, adapter_dir(out, tag, "sft", r, seed), data[f"pairs:{party}"], folder,
                              study.dpo.model_copy(update={"seed": seed}), overwrite=True)
            variants.append(Variant("SFT+DPO", r, dirs, tag))
    return variants


def debate_config(study: StudyConfig, bank_path: Path, adapter: Path | None = None,
                  seats: dict[str, Path] | None = None) -> ExperimentConfig:
    """The study's experiment on its model, with its personas and repetitions, on the base model,
    an adapter, or with ``seats`` (party -> adapter) every agent of a party on its adapter and
    the others on the base; the backend is the experiment's with the study's ``backend`` fields
    over it, the same for every debate before and after tuning."""
    common = {"model": study.model, "repetitions": study.repetitions, "personas": str(Path(bank_path).resolve())}
    experiment = load_config(study.experiment, **common)
    backend = {**experiment.backend.model_dump(exclude_unset=True), **study.backend.model_dump(exclude_unset=True)}
    agents = seat_parties(experiment.agents, seats) if seats else None
    return load_config(study.experiment, **common, backend=backend or None, adapter=adapter, agents=agents)


def _debates(study: StudyConfig, out: Path, bank_path: Path, variants: list[Variant],
             progress: bool) -> dict[str, Path]:
    """The same experiment, with the same personas and backend, on the base model and on every
    adapter (party: both, on every seed's pair of party adapters, found by their shared folder
    name); {"base" or adapter folder name: run folder}. Each run loads its model itself, after
    locking its folder."""
    from ..experiment import run_experiment

    runs = {"base": out / "debates" / "base"}
    run_experiment(debate_config(study, bank_path), runs["base"], progress=progress)
    seatings: dict[str, dict[str | None, Path]] = {}
    for v in variants:
        for adapter in v.adapters:
            seatings.setdefault(adapter.name, {})[v.party] = adapter
    for name, seating in seatings.items():
        runs[name] = out / "debates" / name
        config = debate_config(study, bank_path, seating[None]) if None in seating else \
            debate_config(study, bank_path, seats={str(party): folder for party, folder in seating.items()})
        run_experiment(config, runs[name], progress=progress)
    return runs


def _figures(out: Path, variants: list[Variant], runs: dict[str, Path]) -> None:
    """Paper Figures 6/11/12, one per variant: before solid, after dotted (its seeds pooled)."""
    from ..analysis.figures import attitude_figure, save_figure
    from ..analysis.frames import load, merge_runs

    before = load(runs["base"], complete_only=True)
    for v in {v.slug: v for v in variants}.values():  # party: both, one figure for the parties' shared runs
        label = f"{v.method} r={v.r}" + (" party adapters" if v.party else "")
        after = merge_runs([load(runs[a.name], complete_only=True) for a in v.adapters], f"after {label}")
        fig = attitude_figure([before, after], labels=["before", f"after {label} (seeds pooled)"])
        save_figure(fig, out / "figures" / f"before_after_{v.slug}")


def _benchmarks(study: StudyConfig, out: Path, variants: list[Variant]) -> dict[str, dict[str, Any]]:
    """lm-eval scores per model ("base", "sft-r16-seed0", ..., "compare-<n>"), cached as JSON files."""
    b = study.benchmarks
    tasks = {name: path for name, path in (("mmlu", b.mmlu), ("hellaswag", b.hellaswag)) if path is not None}
    if not tasks:
        return {}
    models = [("base", study.model, None)]
    models += [(name, study.model, a) for v in variants for name, a in zip(v.names, v.adapters)]
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
    rows += [TableRow(study.model, v.method, v.r, v.names, v.party) for v in variants]
    rows += [TableRow(model, "reference", None, (f"compare-{i}",)) for i, model in enumerate(study.benchmarks.compare)]
    finals = {name: default_final(load(run, complete_only=True), study.table_topic) for name, run in runs.items()}
    # An adapter's attitude is its run's; in a two-party study both parties' adapters of a seed share one.
    attitudes = {"base": finals["base"], **{name: finals[a.name] for v in variants for name, a in zip(v.names, v.adapters)}}
    return write_table(table_rows(rows, scores, attitudes, study.table_topic), study.table_topic, out)


def default_final(run: Any, topic: str) -> float:
    """The Default agent's mean survey value at the last iteration of the debates on ``topic``."""
    surveys = run.surveys[(run.surveys["role"] == "default") & (run.surveys["topic"] == topic)]
    if surveys.empty:
        return float("nan")  # the experiment has no Default agent on this topic
    return float(surveys[surveys["iteration"] == surveys["iteration"].max()]["value"].mean())
