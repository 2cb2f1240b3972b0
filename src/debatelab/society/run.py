"""A society run's steps inside :func:`debatelab.experiment.run_experiment` (which holds the
lock, the claim, the models and the signals), with a progress bar over its phases, then its
exports and its state."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..executor import Executor
from ..store import RunStore
from ..store.society import count_encounters
from ..types import Persona
from .config import SocietyConfig
from .engine import SocietyRun
from .export import export_society


def run_society(config: SocietyConfig, executor: Executor, store: RunStore, run_dir: Path,
                bank: Sequence[Persona], progress: bool) -> tuple[SocietyRun, dict[str, Any]]:
    """Run (or resume) every step, export, set the run's state; the run and its summary facts."""
    from tqdm import tqdm

    phases = 1 + config.society.steps * (3 if config.society.memory == "summary" else 2)
    with tqdm(total=phases, desc="society phases", unit="phase", disable=not progress, dynamic_ncols=True) as bar:
        def on_phase(step: int, kind: str, units: int) -> None:
            bar.set_postfix(step=step, phase=kind, units=units, refresh=False)
            bar.update(1)

        society = SocietyRun(config, executor, store, bank, on_phase=on_phase)
        done = society.run()
    export_society(store, run_dir, config)
    counts = store.counts()
    units, complete = sum(counts.values()), counts.get("complete", 0)
    finished = not done.stopped and complete == units
    store.set_state("complete" if finished else "incomplete", "" if finished else done.stopped)
    return society, {"agents": len(society.members), "edges": society.graph.number_of_edges(),
                     "steps": config.society.steps, "steps_done": done.steps_done,
                     "encounters": count_encounters(store), "stopped": done.stopped, "failed": done.failed,
                     "units": units, "complete": complete}
