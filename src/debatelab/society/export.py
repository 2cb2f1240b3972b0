"""A society run's exports, rewritten atomically (all files or none) after every run or resume:

- ``agents.csv`` (agent, name, party, persona_id, community, degree), ``edges.csv`` (source, target);
- ``encounters.csv`` (topic, step, encounter, debate_id, agents: space-separated indices);
- ``panel.csv``: every agent's survey at every step (the survey measures, p0..p10, prompt_sha);
- ``memories.csv`` (memory ``summary``): every note an agent wrote itself;
- ``turns.csv``: the encounters' transcripts (the debate export's columns); ``debates.csv``:
  every unit (encounters, notes, panel surveys) with its status, turns, surveys and failures;
- ``society.json``: the society's settings, the measure, and the model's default attitude per
  topic (the mean of the Default probes surveyed alone at step 0; None where none is valid).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config_schema import measures_of
from ..export import DEBATE_COLUMNS, TURN_COLUMNS, with_probs, write_csv
from ..files import atomic_files
from ..store import RunStore, debate_rows, turn_rows
from ..store.society import agent_rows, edge_rows, encounter_rows, memory_rows, panel_rows, probe_means
from .config import SocietyConfig
from .engine import society_meta

AGENT_COLUMNS = ("agent", "name", "party", "persona_id", "community", "degree")
EDGE_COLUMNS = ("source", "target")
ENCOUNTER_COLUMNS = ("topic", "step", "encounter", "debate_id", "agents")
PANEL_COLUMNS = ("topic", "step", "agent", "party", "method", "score", "valid", "expected_score", "option_mass",
                 "source", "raw", *(f"p{i}" for i in range(11)), "prompt_sha")
MEMORY_COLUMNS = ("topic", "step", "agent", "note", "prompt_sha")


def export_society(store: RunStore, run_dir: Path, config: SocietyConfig) -> None:
    meta = society_meta(config)
    meta["default_attitude"] = probe_means(store, config.survey.resolved_measure)
    meta["default_attitude_by_measure"] = {m: probe_means(store, m) for m in measures_of(config.survey.method)}
    with atomic_files() as files:
        write_csv(run_dir / "agents.csv", AGENT_COLUMNS, agent_rows(store), files)
        write_csv(run_dir / "edges.csv", EDGE_COLUMNS, edge_rows(store), files)
        write_csv(run_dir / "encounters.csv", ENCOUNTER_COLUMNS, encounter_rows(store), files)
        write_csv(run_dir / "panel.csv", PANEL_COLUMNS, with_probs(panel_rows(store)), files)
        if config.society.memory == "summary":
            write_csv(run_dir / "memories.csv", MEMORY_COLUMNS, memory_rows(store), files)
        write_csv(run_dir / "debates.csv", DEBATE_COLUMNS, debate_rows(store), files)
        write_csv(run_dir / "turns.csv", TURN_COLUMNS, turn_rows(store, encounters_only=True), files)
        with files.open(run_dir / "society.json") as fh:
            fh.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
