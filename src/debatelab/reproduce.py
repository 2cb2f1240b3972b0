"""Run a set of paper presets into one results folder with one shared persona bank, then report.

As in the paper, every preset seats agents from the same bank (40 personas per party at full
size), so the Default agent's pre-debate attitude in the three-way run can serve as the dashed
reference line of the runs without a Default agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .config import ExperimentConfig, load_config
from .errors import DebatelabError
from .experiment import RunSummary, run_experiment
from .llm.base import LLM
from .llm.registry import load_llm
from .personas import generate_personas, load_bank, save_bank
from .types import Persona

PRESET_DIR = Path("experiments/paper")
REFERENCE_PRESET = "fig3_three_way"


def resolve_presets(names: Sequence[str], preset_dir: Path = PRESET_DIR) -> list[Path]:
    """Preset names (file stems in ``preset_dir``) or paths; no names = every preset there."""
    if not names:
        found = sorted(preset_dir.glob("*.yaml"))
        if not found:
            raise DebatelabError(f"no presets found in {preset_dir} (run from the repository root or pass paths)")
        return found
    paths = []
    for name in names:
        path = Path(name) if name.endswith((".yaml", ".yml")) else preset_dir / f"{name}.yaml"
        if not path.is_file():
            raise DebatelabError(f"unknown preset {name!r}: no file {path}")
        paths.append(path)
    return paths


def bank_size(configs: Sequence[ExperimentConfig]) -> int:
    """Personas per party: one per repetition (the paper's 40), at least 3 so two-seat rosters
    still have a distinct pair for every repetition at reduced sizes."""
    return max(3, max(c.repetitions for c in configs))


def reproduce(names: Sequence[str], out_dir: Path, *, model: str | None = None, repetitions: int | None = None,
              preset_dir: Path = PRESET_DIR, progress: bool = False, llm: LLM | None = None) -> list[RunSummary]:
    presets = resolve_presets(names, preset_dir)
    configs = [load_config(p, model=model, repetitions=repetitions) for p in presets]  # all validated first
    models = {(c.model, c.backend) for c in configs}
    if len(models) != 1:
        raise DebatelabError("presets use different models or backends; pass --model to run them on one")
    bank_path = out_dir / "personas.jsonl"
    config = configs[0]
    llm = llm or load_llm(config.model, config.backend)
    if not bank_path.exists():
        size = bank_size(configs)
        parties = {r for c in configs for r in c.roles if r != "default"}
        bank = generate_personas(llm, config.model, {p: size for p in parties}, config.seed)
        save_bank(bank, bank_path)
    _check_shared_bank(load_bank(bank_path), bank_path, bank_size(configs), configs)
    summaries = []
    for path in presets:
        preset = load_config(path, model=model, repetitions=repetitions, personas=str(bank_path.resolve()))
        summaries.append(run_experiment(preset, out_dir / path.stem, llm=llm, progress=progress))
    return summaries


def _check_shared_bank(bank: Sequence[Persona], path: Path, size: int, configs: Sequence[ExperimentConfig]) -> None:
    """A bank from an earlier, smaller call cannot serve a larger one: say what to do."""
    for party in {r for c in configs for r in c.roles if r != "default"}:
        have = sum(p.party == party for p in bank)
        if have < size:
            raise DebatelabError(f"the shared persona bank {path} has {have} {party} personas but these presets "
                                 f"need {size}; use a new --out, or delete {path.name} there to regenerate it")


def report_reference(out_dir: Path) -> Path | None:
    candidate = out_dir / REFERENCE_PRESET
    return candidate if (candidate / "run.sqlite").exists() else None
