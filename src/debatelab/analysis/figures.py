"""Attitude-over-iterations figures in the style of the paper (Figures 3-9, 11-12).

One panel per topic; per role the mean attitude with standard-error bars at each survey
iteration. Two runs may be overlaid (first solid, second dotted: before/after fine-tuning), and a
reference run can supply the Default agent's pre-debate attitude as a dashed line for debates the
Default agent did not join (Figures 4 and 8).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than ``pyplot``, so
nothing here changes the global backend or keeps figures alive in pyplot's registry.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .frames import RunData
from .stats import Unit, aggregate

ROLE_COLOURS: dict[str, str] = {"republican": "#c0392b", "democrat": "#2e6fbd", "default": "#333333"}
ROLE_LABELS: dict[str, str] = {"republican": "Republican", "democrat": "Democrat", "default": "Default"}
RUN_STYLES: tuple[str, ...] = ("-", ":")
REFERENCE_LABEL = "Default (before debate)"

Reference = RunData | Mapping[str, float]


def reference_levels(reference: Reference) -> dict[str, float]:
    """The Default agent's mean attitude at iteration 0 per topic (a mapping is passed through)."""
    if not isinstance(reference, RunData):
        return {str(k): float(v) for k, v in reference.items()}
    s = reference.surveys
    before = s[(s["role"] == "default") & (s["iteration"] == 0)]
    if before.empty:
        return {}
    means = aggregate(before, by=("topic",))
    return {str(t): float(m) for t, m in zip(means["topic"], means["mean"]) if not math.isnan(m)}


def attitude_figure(runs: RunData | Sequence[RunData], labels: Sequence[str] | None = None,
                    reference: Reference | None = None, unit: Unit = "agent",
                    title: str | None = None) -> Figure:
    """Mean attitude (± standard error) per role over iterations, one panel per topic."""
    runs = [runs] if isinstance(runs, RunData) else list(runs)
    if not 1 <= len(runs) <= len(RUN_STYLES):
        raise ValueError(f"attitude_figure takes 1 to {len(RUN_STYLES)} runs, not {len(runs)}")
    labels = list(labels) if labels is not None else [r.name for r in runs]
    if len(labels) != len(runs):
        raise ValueError("labels must name every run")
    stats = [aggregate(r.surveys, unit=unit) for r in runs]
    topics = _topic_order(runs)
    if not topics:
        raise ValueError("no surveys to plot")
    names = _topic_names(runs)
    levels = reference_levels(reference) if reference is not None else {}

    rows, cols = _grid(len(topics))
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = _panels(fig, len(topics))
    roles_seen: set[str] = set()
    reference_drawn = False
    for index, (ax, topic) in enumerate(zip(axes, topics)):
        for table, style in zip(stats, RUN_STYLES):
            roles_seen |= _plot_roles(ax, table[table["topic"] == topic], style)
        has_default = any(((t["topic"] == topic) & (t["role"] == "default")).any() for t in stats)
        if topic in levels and not has_default:
            # The paper's dashed line: where the model's own view sits when no Default agent debates.
            ax.axhline(levels[topic], color=ROLE_COLOURS["default"], linestyle="--", linewidth=1.2,
                       label=REFERENCE_LABEL)
            reference_drawn = True
        _style_panel(ax, names.get(topic, topic), pd.concat([t[t["topic"] == topic] for t in stats]),
                     runs[0].scale.top)
        if index + cols >= len(topics):  # lowest in its column; a supxlabel would collide with the legend
            ax.set_xlabel("Iteration")
    _legend(fig, roles_seen, reference_drawn, labels if len(runs) > 1 else [])
    fig.supylabel(y_label(runs))
    if title:
        fig.suptitle(title)
    return fig


Y_LABELS = {"greedy": "greedy T=0 answer", "expected": "expected score"}
SCALE_LABELS = {"0-10": "Attitude (0-10)", "pew4": "Attitude (Pew: 0 not a problem .. 3 very big)"}


def y_label(runs: Sequence[RunData]) -> str:
    """Names the scale and the survey measure plotted, so a figure is never read as another."""
    measures = {r.measure for r in runs}
    scale = SCALE_LABELS.get(runs[0].scale.id, runs[0].scale.id)
    return f"{scale}, {Y_LABELS[measures.pop()]}" if len(measures) == 1 else scale


def behaviour_figure(run: RunData, title: str | None = None) -> Figure:
    """What agents reported (surveys, solid) beside what they said (a judge's stance scores of
    their replies, dotted), per role, one panel per topic; both on the 0-10 scale."""
    said = replace(run, surveys=run.stances.assign(value=run.stances["value"].astype(float)))
    return attitude_figure([run, said], labels=["reported (survey)", "said (stance judge)"], title=title)


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.svg``; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols): 1xN up to three topics, 2x2 for four, then rows of three."""
    cols = n if n <= 3 else 2 if n == 4 else 3
    return math.ceil(n / max(cols, 1)), max(cols, 1)


def _panels(fig: Figure, n: int) -> list[Axes]:
    rows, cols = _grid(n)
    grid = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    for ax in grid[n:]:
        fig.delaxes(ax)  # a partly filled last row keeps only real panels
    return list(grid[:n])


def _topic_order(runs: Sequence[RunData]) -> list[str]:
    """Topics in config order (as the experiment listed them), then any others alphabetically."""
    present = {str(t) for r in runs for t in r.surveys["topic"].unique()}
    listed = [t if isinstance(t, str) else t.get("id") for r in runs for t in r.config.get("topics", [])]
    ordered = list(dict.fromkeys(t for t in listed if t in present))
    return ordered + sorted(present - set(ordered))


def _topic_names(runs: Sequence[RunData]) -> dict[str, str]:
    names: dict[str, str] = {}
    for run in reversed(runs):  # the first run's wording wins
        named = run.debates.dropna(subset=["topic_name"])
        names.update(zip(named["topic"].astype(str), named["topic_name"].astype(str)))
    return names


def _plot_roles(ax: Axes, table: pd.DataFrame, style: str) -> set[str]:
    """One error-bar line per role present; a lone observation (se NaN) gets no bar."""
    roles = [r for r in ROLE_COLOURS if r in set(table["role"])]
    for role in roles:
        rows = table[table["role"] == role].sort_values("iteration")
        x, y, se = (rows[c].to_numpy(dtype=float) for c in ("iteration", "mean", "se"))
        ax.errorbar(x, y, yerr=np.nan_to_num(se), color=ROLE_COLOURS[role],
                    linestyle=style, marker="o", markersize=4, capsize=3, linewidth=1.6,
                    label=ROLE_LABELS[role])
    return set(roles)


def _style_panel(ax: Axes, name: str, table: pd.DataFrame, top: int = 10) -> None:
    ax.set_title(name)
    ax.set_ylim(0.0, float(top))
    ax.set_xticks(sorted({int(i) for i in table["iteration"]}))
    ax.grid(axis="y", alpha=0.3)


def _legend(fig: Figure, roles: set[str], reference: bool, run_labels: Sequence[str]) -> None:
    """One figure legend: role colours, the reference line, and run linestyles when overlaying."""
    handles = [Line2D([], [], color=ROLE_COLOURS[r], marker="o", label=ROLE_LABELS[r])
               for r in ROLE_COLOURS if r in roles]
    if reference:
        handles.append(Line2D([], [], color=ROLE_COLOURS["default"], linestyle="--", label=REFERENCE_LABEL))
    handles += [Line2D([], [], color="#777777", linestyle=s, label=str(label))
                for label, s in zip(run_labels, RUN_STYLES)]
    if handles:
        # about two legend entries per 5-inch panel fit on one line; wrap the rest
        per_row = max(2, min(5, int(fig.get_figwidth() / 2.5)))
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), per_row), frameon=False)
