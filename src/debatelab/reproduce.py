"""Run a set of paper presets into one results folder with one shared persona bank per model, then report.

As in the paper, every preset on one model seats agents from the same bank: 40 personas per party
at full size, which the three-way runs seat one per debate and the echo-chamber runs in 20 pairs.
The Default agent's pre-debate attitude in a run with the Default agent serves as the dashed
reference line of the matching run without one (``REFERENCES``).

Presets that pin their own model (Figure 7: Mistral and Solar) run on it, with a bank that model
wrote, as the paper's agents were written by the model that plays them; ``--model`` runs every
preset on one model instead.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from .config import ExperimentConfig, load_config
from .errors import DebatelabError
from .experiment import RunSummary, run_experiment
from .store import RunLock, lock_run_dir
from .llm.base import LLM
from .llm.registry import load_llm
from .personas import generate_personas, load_bank, save_bank
from .types import Persona

PRESET_DIR = Path("experiments/paper")
BANK_NAME = "personas.jsonl"

# Preset -> the preset whose Default agent gives its dashed line (paper figure captions).
REFERENCES: dict[str, str] = {
    "fig4_two_way": "fig3_three_way",  # Figure 4: "the Default agent's viewpoint ... taken from Figure 3"
    "fig8_echo_republican": "fig5_echo_republican_default",  # Figure 8: "... taken from Figure 5"
    "fig9b_echo_democrat": "fig9_echo_democrat_default",  # the Democrat counterpart of Figure 8
}


def resolve_presets(names: Sequence[str], preset_dir: Path = PRESET_DIR) -> list[Path]:
    """Preset names (file stems in ``preset_dir``) or paths; no names = every preset there."""
    if not names:
        found = sorted(preset_dir.glob("*.yaml"))
        if not found:
            raise DebatelabError(f"no presets found in {preset_dir} (run from the repository root or pass paths)")
        return found
    paths = []
    for name in dict.fromkeys(names):  # a preset named twice runs once
        path = Path(name) if name.endswith((".yaml", ".yml")) else preset_dir / f"{name}.yaml"
        if not path.is_file():
            raise DebatelabError(f"unknown preset {name!r}: no file {path}")
        paths.append(path)
    return paths


def preset_topics(names: Sequence[str], preset_dir: Path = PRESET_DIR, model: str | None = None) -> dict[str, list[str]]:
    """Per model the presets would run on, the topic ids they debate (for the fidelity warning)."""
    out: dict[str, list[str]] = {}
    for path in resolve_presets(names, preset_dir):
        config = load_config(path, model=model)
        out.setdefault(config.model, []).extend(t.id for t in config.resolved_topics())
    return out


def needs_cuda(config: ExperimentConfig) -> bool:
    """Whether the preset cannot run here: it asks for CUDA (or bitsandbytes quantization, which
    needs it) and torch sees no CUDA device."""
    if config.backend.device != "cuda" and config.backend.quantization == "none":
        return False
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return True
    import torch

    return not torch.cuda.is_available()


def runnable(presets: list[Path], configs: list[ExperimentConfig], explicit: bool) -> list[int]:
    """Indices of the presets to run. Named presets that need a missing GPU fail at once, before
    hours of the others; with no names (every preset) they are left out, with a note."""
    blocked = [i for i, c in enumerate(configs) if needs_cuda(c)]
    if blocked and explicit:
        names = ", ".join(presets[i].stem for i in blocked)
        raise DebatelabError(f"preset(s) {names} need a CUDA GPU, and torch sees none here")
    if blocked:
        print(f"note: leaving out {', '.join(presets[i].stem for i in blocked)} (they need a CUDA GPU, and torch "
              "sees none here)", file=sys.stderr)
    return [i for i in range(len(presets)) if i not in blocked]


def bank_sizes(configs: Sequence[ExperimentConfig]) -> dict[str, int]:
    """Personas per party for one shared bank: the most any preset seats, i.e. seats of that party
    times repetitions. At paper size that is 40 for every party: 40 three-way debates seat one
    each, and 20 echo-chamber debates seat the same 40 in pairs, each in exactly one debate."""
    sizes: dict[str, int] = {}
    for config in configs:
        for party, seats in Counter(r for r in config.roles if r != "default").items():
            sizes[party] = max(sizes.get(party, 0), seats * config.repetitions)
    return sizes


def reproduce(names: Sequence[str], out_dir: Path, *, model: str | None = None, repetitions: int | None = None,
              preset_dir: Path = PRESET_DIR, progress: bool = False, llm: LLM | None = None) -> list[RunSummary]:
    """Run the presets into ``out_dir/<preset>/``, grouped by model: each model has one persona
    bank shared by all its presets, and each (model, backend) is loaded once, one model at a time.
    ``model`` runs every preset on that model with default backend options (a preset's backend
    options, such as Figure 7's 8-bit quantization, belong to its own model). ``llm`` (tests)
    serves every preset."""
    presets = resolve_presets(names, preset_dir)
    overrides = {"model": model, "repetitions": repetitions, "backend": {} if model else None}
    configs = [load_config(p, **overrides) for p in presets]  # all validated first
    keep = runnable(presets, configs, explicit=bool(names)) if llm is None else list(range(len(presets)))
    if not keep:
        raise DebatelabError("no preset can run here (every one needs a CUDA GPU)")
    presets, configs = [presets[i] for i in keep], [configs[i] for i in keep]
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(config.model, []).append(i)
    paths = bank_paths(out_dir, list(groups))
    for name, idx in groups.items():  # an existing bank that cannot serve fails before anything runs
        if paths[name].exists():
            _check_shared_bank(load_bank(paths[name]), paths[name], bank_sizes([configs[i] for i in idx]), name)
    summaries: dict[int, RunSummary] = {}
    locks: list[RunLock] = []
    try:  # every preset's folder is locked before any model loads: a busy one is refused at once
        locks += [lock_run_dir(out_dir / p.stem) for p in presets]
        for name, idx in groups.items():
            backends = _Backends(llm)
            ensure_bank(paths[name], name, [configs[i] for i in idx], backends.get)
            for i in idx:
                preset = load_config(presets[i], **overrides, personas=str(paths[name].resolve()))
                summaries[i] = run_experiment(preset, out_dir / presets[i].stem, llm=backends.get(preset),
                                              progress=progress, lock=locks[i])
            del backends  # one model's weights go before the next model's load
    finally:
        for held in locks:
            held.release()
    return [summaries[i] for i in range(len(presets))]


class _Backends:
    """The backends of one model's presets, each (model, backend options) loaded once."""

    def __init__(self, fixed: LLM | None):
        self.fixed = fixed
        self.loaded: dict[str, LLM] = {}

    def get(self, config: ExperimentConfig) -> LLM:
        if self.fixed is not None:
            return self.fixed
        key = config.backend.model_dump_json()
        if key not in self.loaded:
            self.loaded[key] = load_llm(config.model, config.backend)
        return self.loaded[key]


def bank_paths(out_dir: Path, models: Sequence[str]) -> dict[str, Path]:
    """Each model's bank: ``personas.jsonl`` belongs to the model that wrote it (or, in a new
    folder, to the first model), ``personas-<model>.jsonl`` to every other one."""
    shared = out_dir / BANK_NAME
    owner = _bank_model(shared) if shared.exists() else None
    owner = owner or (models[0] if models else None)  # a new folder, or a bank that does not say
    return {m: shared if m == owner else
            out_dir / f"personas-{re.sub(r'[^A-Za-z0-9._-]+', '-', m).strip('-')}.jsonl" for m in models}


def _bank_model(path: Path) -> str | None:
    """The one model that wrote a bank; None when its personas do not say, or several did (then
    :func:`_check_shared_bank` refuses it for any model it does not belong to)."""
    models = {p.model for p in load_bank(path) if p.model}
    return models.pop() if len(models) == 1 else None


def ensure_bank(path: Path, model: str, configs: Sequence[ExperimentConfig],
                backend: Callable[[ExperimentConfig], LLM]) -> None:
    """``path`` holds one bank that can seat every one of ``configs``: written by ``model``
    (through ``backend(configs[0])``) when absent, refused in one line when it cannot serve."""
    sizes = bank_sizes(configs)
    if not path.exists():
        config = configs[0]
        gen = config.persona_generation
        bank = generate_personas(backend(config), model, sizes, config.seed, temperature=gen.temperature,
                                 max_tokens=gen.max_tokens, min_words=gen.min_words, max_attempts=gen.max_attempts)
        save_bank(bank, path)
    _check_shared_bank(load_bank(path), path, sizes, model)


def _check_shared_bank(bank: Sequence[Persona], path: Path, sizes: dict[str, int], model: str) -> None:
    """A bank from an earlier, smaller call (or from another model) cannot serve this one: say what to do."""
    others = {p.model for p in bank if p.model and p.model != model}
    if others:
        raise DebatelabError(f"the shared persona bank {path} was written by {', '.join(sorted(others))}, not "
                             f"{model}; use a new --out, or delete {path.name} there to regenerate it")
    for party, size in sorted(sizes.items()):
        have = sum(p.party == party for p in bank)
        if have < size:
            raise DebatelabError(f"the shared persona bank {path} has {have} {party} personas but these presets "
                                 f"need {size}; use a new --out, or delete {path.name} there to regenerate it")


def reference_preset(preset: str) -> str | None:
    """The preset whose Default agent's pre-debate attitude is ``preset``'s dashed line, if any."""
    return REFERENCES.get(preset)


def report_reference(out_dir: Path, preset: str | None = None) -> Path | None:
    """The reference run for ``preset`` (Figure 8 -> the Figure 5 run), when it exists in ``out_dir``.

    Without a preset: the one reference run that every reference-needing run in ``out_dir``
    shares (one report, one dashed line), or None where they need different ones, so a figure
    never gets another figure's reference; use :func:`report_references` for one per run."""
    if preset is not None:
        ref = reference_preset(preset)
        return _run_dir(out_dir, ref) if ref else None
    present = [p for p in REFERENCES if _run_dir(out_dir, p) is not None]
    wanted = {REFERENCES[p] for p in present}
    if len(wanted) != 1:
        return None
    return _run_dir(out_dir, wanted.pop())


def report_references(out_dir: Path, presets: Sequence[str]) -> dict[str, Path | None]:
    """Per preset, its own reference run in ``out_dir`` (None for runs with a Default agent)."""
    return {p: report_reference(out_dir, p) for p in presets}


def _run_dir(out_dir: Path, preset: str) -> Path | None:
    candidate = out_dir / preset
    return candidate if (candidate / "run.sqlite").exists() else None
