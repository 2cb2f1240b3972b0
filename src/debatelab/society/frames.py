"""Read a society run directory's CSV exports into pandas frames and a networkx graph.

A society run (issue 14) is a population of agents on a graph, surveyed at step 0 and again
after every step of encounters (short debates of 2 or 3 agents along edges). The directory holds
``agents.csv``, ``edges.csv``, ``encounters.csv``, ``panel.csv`` and ``society.json``.

``panel.value`` is the attitude every measure uses, by the run's **measure**: ``greedy`` (the
parsed T=0 answer ``score``, NaN where the survey was invalid) or ``expected`` (the expected
score of the 0..10 distribution, NaN where there was none). The measure comes from
``society.json`` unless ``load_society(..., measure=...)`` overrides it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from ..errors import DebatelabError

MEASURES = ("greedy", "expected")
PARTIES = ("republican", "democrat", "default")
REQUIRED = {
    "agents.csv": ("agent", "name", "party", "persona_id", "community", "degree"),
    "edges.csv": ("source", "target"),
    "encounters.csv": ("topic", "step", "encounter", "debate_id", "agents"),
    "panel.csv": ("topic", "step", "agent", "party", "score", "valid", "expected_score"),
}
TEXT_COLUMNS = {"topic": str, "debate_id": str, "agents": str, "name": str, "party": str, "persona_id": str}


@dataclass
class SocietyData:
    """One society run as frames. ``agents``: agent, name, party, persona_id, community, degree.
    ``edges``: source, target. ``encounters``: topic, step, encounter, debate_id, agents (the
    raw space-separated text) and ``members`` (tuple of ints). ``panel``: the CSV's columns plus
    ``value`` (see the module docstring). ``meta``: society.json as read."""

    run_dir: Path
    agents: pd.DataFrame
    edges: pd.DataFrame
    encounters: pd.DataFrame
    panel: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    measure: str = "greedy"

    def graph(self) -> nx.Graph:
        """The population graph: every agent a node (isolated ones too), with its party."""
        g = nx.Graph()
        g.add_nodes_from((int(a), {"party": p}) for a, p in zip(self.agents["agent"], self.agents["party"]))
        g.add_edges_from(zip(self.edges["source"].astype(int), self.edges["target"].astype(int)))
        return g

    @property
    def topics(self) -> list[str]:
        """Topics in society.json's order, then any others in the panel, alphabetically."""
        listed = [str(t) for t in (self.meta.get("topics") or {})]
        present = set(self.panel["topic"].astype(str))
        return [t for t in listed if t in present] + sorted(present - set(listed))

    @property
    def topic_names(self) -> dict[str, str]:
        names = self.meta.get("topics") or {}
        return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}

    @property
    def steps(self) -> int:
        """S: society.json's ``steps``, else the last step in the panel."""
        declared = self.meta.get("steps")
        if isinstance(declared, int) and declared >= 0:
            return declared
        return int(self.panel["step"].max()) if len(self.panel) else 0

    def declared_defaults(self) -> dict[str, float]:
        """society.json's ``default_attitude`` per topic (a single number applies to every topic);
        topics it leaves out or gives as null are absent."""
        by_measure = self.meta.get("default_attitude_by_measure")  # the probes, read with each measure
        declared = by_measure.get(self.measure) if isinstance(by_measure, dict) else self.meta.get("default_attitude")
        if declared is None:
            return {}
        if isinstance(declared, (int, float)) and not isinstance(declared, bool):
            return {t: float(declared) for t in self.topics} if math.isfinite(declared) else {}
        if isinstance(declared, dict):
            return {str(t): float(v) for t, v in declared.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        raise DebatelabError(f"society.json: default_attitude must be null, a number or a mapping, not {declared!r}")

    def members(self) -> pd.DataFrame:
        """One row per encounter member: topic, step, encounter, debate_id, agent."""
        rows = self.encounters[["topic", "step", "encounter", "debate_id", "members"]].explode("members")
        return rows.rename(columns={"members": "agent"}).astype({"agent": int}).reset_index(drop=True)


def load_society(run_dir: str | Path, measure: str | None = None) -> SocietyData:
    """Read a society run directory; ``measure`` (greedy | expected) overrides society.json's.
    Raises a one-line :class:`DebatelabError` naming the file that is missing or malformed."""
    run_dir = Path(run_dir)
    meta = _read_meta(run_dir / "society.json")
    chosen = measure or meta.get("measure") or "greedy"
    if chosen not in MEASURES:
        raise DebatelabError(f"unknown survey measure {chosen!r} (choose greedy or expected)")
    frames = {name: _read_csv(run_dir / name, columns) for name, columns in REQUIRED.items()}
    agents = _agents(frames["agents.csv"], run_dir / "agents.csv")
    known = set(agents["agent"])
    edges = _ints(frames["edges.csv"], ("source", "target"), run_dir / "edges.csv")
    _check_known(edges[["source", "target"]].to_numpy().ravel(), known, run_dir / "edges.csv")
    encounters = _encounters(frames["encounters.csv"], known, run_dir / "encounters.csv")
    panel = _panel(frames["panel.csv"], chosen, known, run_dir / "panel.csv")
    return SocietyData(run_dir=run_dir, agents=agents, edges=edges, encounters=encounters, panel=panel,
                       meta=meta, measure=chosen)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DebatelabError(f"society run {path.parent} lacks {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DebatelabError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(meta, dict):
        raise DebatelabError(f"{path} must hold a JSON object")
    return meta


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DebatelabError(f"society run {path.parent} lacks {path.name}")
    try:
        frame = pd.read_csv(path, dtype={c: t for c, t in TEXT_COLUMNS.items()}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=list(columns))
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise DebatelabError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DebatelabError(f"{path} lacks column(s) {', '.join(missing)}")
    return frame


def _ints(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> pd.DataFrame:
    out = frame.copy()
    for column in columns:
        values = pd.to_numeric(out[column], errors="coerce")
        if values.isna().any() or (values != values.round()).any():
            raise DebatelabError(f"{path}: column {column} must hold integers")
        out[column] = values.astype(int)
    return out


def _check_known(agents: np.ndarray, known: set[int], path: Path) -> None:
    unknown = sorted(set(int(a) for a in agents) - known)
    if unknown:
        raise DebatelabError(f"{path} names agent(s) not in agents.csv: {', '.join(map(str, unknown[:5]))}")


def _agents(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    agents = _ints(frame, ("agent",), path)
    if agents["agent"].duplicated().any():
        raise DebatelabError(f"{path}: agent {int(agents['agent'][agents['agent'].duplicated()].iloc[0])} "
                             "appears twice")
    bad = sorted(set(agents["party"].astype(str)) - set(PARTIES))
    if bad:
        raise DebatelabError(f"{path}: unknown party {bad[0]!r} (expected {', '.join(PARTIES)})")
    agents["community"] = pd.to_numeric(agents["community"], errors="coerce").astype("Int64")
    agents["degree"] = pd.to_numeric(agents["degree"], errors="coerce").astype("Int64")
    return agents.sort_values("agent", ignore_index=True)


def _members(text: Any) -> tuple[int, ...]:
    parts = str(text).split() if isinstance(text, str) else []
    if not 2 <= len(parts) <= 3 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(text)
    return tuple(int(p) for p in parts)


def _encounters(frame: pd.DataFrame, known: set[int], path: Path) -> pd.DataFrame:
    out = _ints(frame, ("step", "encounter"), path)
    try:
        out["members"] = [_members(a) for a in out["agents"]]
    except ValueError as exc:
        raise DebatelabError(f"{path}: agents must be 2 or 3 agent numbers separated by spaces, not "
                             f"{exc.args[0]!r}") from None
    _check_known(np.array([a for m in out["members"] for a in m], dtype=int), known, path)
    # a missing debate id still needs a cluster of its own in the attractor fit
    fallback = out["topic"].astype(str) + ":" + out["step"].astype(str) + ":" + out["encounter"].astype(str)
    out["debate_id"] = out["debate_id"].fillna(fallback)
    return out.sort_values(["topic", "step", "encounter"], ignore_index=True)


def _panel(frame: pd.DataFrame, measure: str, known: set[int], path: Path) -> pd.DataFrame:
    panel = _ints(frame, ("step", "agent"), path)
    _check_known(panel["agent"].to_numpy(), known, path)
    if panel.duplicated(["topic", "step", "agent"]).any():
        raise DebatelabError(f"{path}: an agent has more than one survey at one topic and step")
    valid = pd.to_numeric(panel["valid"], errors="coerce").fillna(0).astype(bool)
    score = pd.to_numeric(panel["score"], errors="coerce")
    expected = pd.to_numeric(panel["expected_score"], errors="coerce")
    panel["valid"] = valid
    panel["value"] = np.where(valid, score, np.nan) if measure == "greedy" else expected.astype(float)
    return panel.sort_values(["topic", "step", "agent"], ignore_index=True)
