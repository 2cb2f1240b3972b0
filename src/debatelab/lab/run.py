"""Run a lab: the baseline and every method on the same personas, seeds and topics, then measure.

Layout of the output folder (locked for the whole lab, like a study's)::

    personas.jsonl                     the shared bank (when the lab names none)
    runs/<method>/<experiment>/        one ordinary, resumable run each
    compare.csv, compare.json          method x metric x role, with 95% intervals
    forest.png                         the forest plot of the same table

Each run resumes on its own and stance scoring skips what it scored, so running the same command
again after an interruption continues where it stopped. The base model (the experiments' model)
is loaded once and serves every run, the stance judge and the perplexities.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..config import ExperimentConfig
from ..errors import DebatelabError
from ..files import atomic_open, write_json
from ..llm.base import LLM
from ..llm.registry import split_model
from .config import LabConfig, method_configs

BANK_NAME = "personas.jsonl"


@dataclass(frozen=True)
class LabResult:
    table: Path
    forest: Path
    runs: dict[str, list[Path]]
    seconds: float


def run_lab(lab: LabConfig, out: Path, *, progress: bool = False, llm: LLM | None = None) -> LabResult:
    """Run (or resume) every method's runs into ``out``, then write the comparison. ``llm``
    (tests) serves as the base model instead of loading the experiments' own."""
    from ..store import lock_run_dir

    start = time.monotonic()
    configs = method_configs(lab, (lab.personas or out / BANK_NAME).resolve())  # all validated before anything runs
    lock, undo = lock_run_dir(out), False
    try:
        base = configs["baseline"]
        llm = llm or _load(base[0])
        _check_layers(lab, llm)  # a steering layer the model lacks fails before the first run
        if lab.personas is None:
            _ensure_bank(out / BANK_NAME, base, llm)
        runs = {name: [_run(config, out / "runs" / name / (config.name or "run"), llm, lab, progress)
                       for config in group] for name, group in configs.items()}
        table, forest = _measure(lab, runs, llm, out, base[0].model)
    except BaseException as exc:
        undo = isinstance(exc, DebatelabError) and exc.bad_input  # bad input leaves no folder it created
        raise
    finally:
        lock.release(undo=undo)
    return LabResult(table, forest, runs, time.monotonic() - start)


def _check_layers(lab: LabConfig, llm: LLM) -> None:
    from ..llm.wrappers import unwrap

    layers = {m.steering.layer for m in lab.methods.values() if m.steering is not None}
    model = getattr(unwrap(llm), "model", None)  # the transformers backends' module
    if layers and model is not None:
        from ..llm.hf_methods import check_layer

        for layer in sorted(layers):
            check_layer(model, layer)


def _load(config: ExperimentConfig) -> LLM:
    from ..llm.registry import load_llm

    return load_llm(config.model, config.backend)


def _ensure_bank(path: Path, configs: list[ExperimentConfig], llm: LLM) -> None:
    from ..reproduce import ensure_bank

    ensure_bank(path, configs[0].model, configs, lambda _: llm)


def _run(config: ExperimentConfig, run_dir: Path, llm: LLM, lab: LabConfig, progress: bool) -> Path:
    from ..experiment import run_experiment
    from ..stance import score_stances

    summary = run_experiment(config, run_dir, llm=llm, progress=progress)
    if summary.complete < summary.debates:
        raise DebatelabError(f"lab: {run_dir} finished {summary.complete}/{summary.debates} debates; "
                             "run the lab again to retry the rest")
    if lab.judge:
        score_stances(run_dir, config.model, llm)
    if progress:
        print(f"{run_dir}: {summary.debates} debates", file=sys.stderr)
    return run_dir


def _measure(lab: LabConfig, runs: Mapping[str, list[Path]], llm: LLM, out: Path, model: str) -> tuple[Path, Path]:
    from .forest import forest_plot
    from .measures import method_metrics

    transformers = split_model(model)[0] in ("embedded", "hf")
    perplexity = _perplexities(runs, llm) if lab.perplexity and transformers else None
    table = method_metrics(runs, perplexity=perplexity, seed=lab.seed, n_boot=lab.n_boot)
    path = out / "compare.csv"
    with atomic_open(path, newline="") as fh:
        table.to_csv(fh, index=False)
    write_json(out / "compare.json", {"lab": lab.name, "methods": lab.method_names(),
                                      "runs": {k: [str(p) for p in v] for k, v in runs.items()},
                                      "records": table.replace({np.nan: None}).to_dict("records")})
    return path, forest_plot(table, out / "forest.png")


def _perplexities(runs: Mapping[str, list[Path]], llm: LLM) -> dict[str, np.ndarray]:
    """Per method, every reply's perplexity under the base model."""
    from ..llm.wrappers import unwrap
    from .quality import reply_perplexities, reply_texts

    base = unwrap(llm)
    return {name: reply_perplexities(base, [t for d in dirs for t in reply_texts(d)["text"]])  # type: ignore[arg-type]
            for name, dirs in runs.items()}
