"""Read a run directory into pandas DataFrames with join keys (``debate_id``, ``agent_index``).

``surveys.value`` is the attitude used by every statistic, by the run's **measure**:
``greedy`` (the paper's: the parsed T=0 answer, NaN where it was not an integer 0..10) or
``expected`` (the expected score of the renormalised 0..10 distribution, NaN where there was
none). The measure comes from the run's ``survey.measure`` (default: ``greedy`` whenever the
survey method records it) unless ``load(..., measure=...)`` says otherwise; ``RunData.measure``
names the one in use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..config import measures_of
from ..errors import DebatelabError
from ..scales import Scale, scale_of
from ..store import DB_NAME
from ..store.views import read_views


@dataclass
class RunData:
    """One run directory as DataFrames, plus its stored config and provenance (``meta``)."""

    run_dir: Path
    debates: pd.DataFrame
    agents: pd.DataFrame
    turns: pd.DataFrame
    surveys: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    left_out: pd.DataFrame | None = None
    """With ``complete_only``: the debates left out (failed or unfinished), with status and error."""
    measure: str = "greedy"
    """Which survey measure ``surveys.value`` holds: ``greedy`` (the paper's) or ``expected``."""
    stances: pd.DataFrame = field(default_factory=lambda: _with_values(pd.DataFrame(
        {c: [] for c in ("debate_id", "topic", "iteration", "agent_index", "role", "judge", "score", "valid",
                         "expected_score", "probs_json")}), "greedy"))
    """A stance judge's scores of the replies (``score-stance``), on the topic's 0-10 scale;
    ``value`` by the same measure as the surveys (where the judge recorded it)."""

    @property
    def scale(self) -> Scale:
        """The survey's scale: the paper's 0-10, or Pew's 4-point item (scores 0..3)."""
        return scale_of(self.config)

    @property
    def name(self) -> str:
        return str(self.meta.get("config", {}).get("name") or self.run_dir.name)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta.get("config", {}))


def load(run_dir: str | Path, complete_only: bool = False, measure: str | None = None,
         society: bool = False) -> RunData:
    """All debates of a run, or with ``complete_only`` just the finished ones (a run that is still
    going, or was interrupted, otherwise averages later iterations over fewer debates).
    ``measure`` (``greedy`` | ``expected``) overrides the run's own survey measure. A society run
    is refused unless ``society`` (its units are not debates: the views would pool its steps)."""
    run_dir = Path(run_dir)
    views = read_views(run_dir)  # read-only, verified, one snapshot
    frames, meta = {**views.frames(), "stances": views.stances}, views.meta
    if is_society(meta) and not society:
        raise DebatelabError(f"run {run_dir} is a society: read it with debatelab.society.frames.load_society "
                             "or `debatelab report` (the debate views would pool its steps)")
    left_out = None
    if complete_only:
        debates = frames["debates"]
        done = set(debates.loc[debates["status"] == "complete", "debate_id"])
        left_out = debates[~debates["debate_id"].isin(done)].reset_index(drop=True)
        frames = {name: df[df["debate_id"].isin(done)].reset_index(drop=True) for name, df in frames.items()}
    chosen = resolve_measure(meta.get("config", {}), measure, run_dir / DB_NAME)
    frames["surveys"] = _with_values(frames["surveys"], chosen)
    frames["stances"] = _with_values(frames["stances"], _stance_measure(frames["stances"], chosen))
    for name in ("turns", "surveys", "stances"):
        frames[name] = frames[name].sort_values(["topic", "repetition", "debate_id", "iteration", "agent_index"],
                                                ignore_index=True)
    return RunData(run_dir=run_dir, meta=meta, left_out=left_out, measure=chosen, **frames)


def is_society(meta: Mapping[str, Any]) -> bool:
    """Whether a run's stored meta is a society's (its config has a ``society:`` section)."""
    return "society" in (meta.get("config") or {})


def resolve_measure(config: Any, override: str | None, where: Path) -> str:
    """The measure to analyse: ``override``, else the run's ``survey.measure``, else the paper's
    greedy answer whenever the survey method recorded it."""
    survey = (config.get("survey") or {}) if isinstance(config, dict) else {}
    method = survey.get("method", "logprobs")  # runs before the greedy answer was recorded
    recorded = measures_of(method) if method in ("both", "generate", "logprobs") else ()
    chosen = override or survey.get("measure") or (recorded[0] if recorded else "greedy")
    if chosen not in ("greedy", "expected"):
        raise DebatelabError(f"unknown survey measure {chosen!r} (choose greedy or expected)")
    if chosen not in recorded:
        raise DebatelabError(f"run {where.parent} has no {chosen!r} survey measure (its survey method "
                             f"{method!r} records {', '.join(recorded) or 'none'})")
    return chosen


def _stance_measure(stances: pd.DataFrame, measure: str) -> str:
    """The surveys' measure where every stance recorded it, else the judge's greedy answer."""
    recorded = not stances.empty and stances["expected_score"].notna().all()
    return "expected" if measure == "expected" and recorded else "greedy"


def _with_values(surveys: pd.DataFrame, measure: str) -> pd.DataFrame:
    surveys = surveys.copy()
    surveys["valid"] = surveys["valid"].astype(bool)
    if measure == "greedy":
        surveys["value"] = np.where(surveys["valid"], surveys["score"].astype(float), np.nan)
    else:
        surveys["value"] = surveys["expected_score"].astype(float)
    surveys["probs"] = surveys.pop("probs_json").map(lambda s: json.loads(s) if isinstance(s, str) else None)
    return surveys


def merge_runs(runs: list[RunData], name: str) -> RunData:
    """Several runs of one setting as one (e.g. the fine-tuning seeds, averaged as the paper does).
    Debate ids differ across runs (the model identity is part of them), so frames just stack."""
    if not runs:
        raise DebatelabError("merge_runs needs at least one run")
    stacked = {attr: pd.concat([getattr(r, attr) for r in runs], ignore_index=True)
               for attr in ("debates", "agents", "turns", "surveys", "stances")}
    meta = {**runs[0].meta, "config": {**runs[0].config, "name": name}, "merged_from": [str(r.run_dir) for r in runs]}
    return RunData(run_dir=runs[0].run_dir.parent, meta=meta, **stacked)
