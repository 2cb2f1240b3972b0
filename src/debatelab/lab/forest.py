"""The lab's forest plot: methods x metrics from :func:`.measures.method_metrics`.

One panel per metric (in :data:`.measures.METRICS` order), one row per method (the table's
order, top to bottom), per role a point with its 95 % whiskers, slightly apart so the roles do
not hide each other, and a dashed line per role at the baseline's estimate; each panel's title
says which way is better. A metric with no estimate at all says so in its panel. Built on
``matplotlib.figure.Figure`` with an Agg canvas, as the analysis figures are, and written
atomically: a reader sees the old plot or the new one, never half a PNG.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..analysis.figures import ROLE_COLOURS, ROLE_LABELS
from ..errors import DebatelabError
from ..files import write_bytes
from .measures import BETTER, METRICS

REQUIRED = ("method", "metric", "role", "estimate", "low", "high")
COLUMNS_PER_ROW = 4
SPREAD = 0.25  # vertical room the roles of one method share, in rows


def forest_plot(table: pd.DataFrame, path: Path, baseline: str = "baseline") -> Path:
    """Draw ``table`` (a :func:`.measures.method_metrics` table) as a forest plot PNG at ``path``."""
    return _write(forest_figure(table, baseline), Path(path))


def forest_figure(table: pd.DataFrame, baseline: str = "baseline") -> Figure:
    """The forest plot as a figure: one panel (axes) per metric, in :data:`.measures.METRICS` order."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DebatelabError(f"forest plot: the table lacks column(s) {', '.join(missing)}")
    if table.empty:
        raise DebatelabError("forest plot: the table has no rows")
    methods = list(dict.fromkeys(table["method"]))
    if baseline not in methods:
        raise DebatelabError(f"forest plot: no method named {baseline!r} in the table ({', '.join(map(str, methods))})")
    metrics = [m for m in METRICS if m in set(table["metric"])]
    metrics += sorted(set(table["metric"]) - set(metrics))
    roles = list(dict.fromkeys(table["role"]))
    fig = _figure(len(metrics), len(methods))
    cols = min(COLUMNS_PER_ROW, len(metrics))
    axes = fig.subplots(math.ceil(len(metrics) / cols), cols, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        fig.delaxes(ax)
    for k, (ax, metric) in enumerate(zip(axes, metrics)):
        _panel(ax, table[table["metric"] == metric], metric, methods, roles, baseline, labels=k % cols == 0)
    handles = [Line2D([], [], marker="o", color=_colour(r), label=ROLE_LABELS.get(r, str(r))) for r in roles]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(roles), frameon=False)
    fig.suptitle("Methods against the baseline (dashed), 95% intervals")
    return fig


def _figure(n_metrics: int, n_methods: int) -> Figure:
    rows = math.ceil(n_metrics / min(COLUMNS_PER_ROW, n_metrics))
    fig = Figure(figsize=(3.6 * min(COLUMNS_PER_ROW, n_metrics), rows * (1.0 + 0.45 * n_methods) + 1.0),
                 layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colour(role: str) -> str:
    return ROLE_COLOURS.get(role, "#7f7f7f")


def _panel(ax: Axes, rows: pd.DataFrame, metric: str, methods: list[str], roles: list[str], baseline: str,
           labels: bool) -> None:
    offsets = np.linspace(-SPREAD, SPREAD, len(roles)) if len(roles) > 1 else np.zeros(1)
    drawn = False
    for role, offset in zip(roles, offsets):
        mine = rows[rows["role"] == role].set_index("method")
        for i, method in enumerate(methods):
            if method not in mine.index or not np.isfinite(mine.at[method, "estimate"]):
                continue
            est, low, high = (float(mine.at[method, c]) for c in ("estimate", "low", "high"))
            y = i + offset
            if np.isfinite(low) and np.isfinite(high):
                ax.plot([low, high], [y, y], color=_colour(role), lw=1.4)
            ax.plot([est], [y], "o", color=_colour(role), ms=5)
            drawn = True
        if baseline in mine.index and np.isfinite(mine.at[baseline, "estimate"]):
            ax.axvline(float(mine.at[baseline, "estimate"]), color=_colour(role), ls="--", lw=0.8, alpha=0.7)
    if not drawn:
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes, color="#7f7f7f")
    ax.set_yticks(range(len(methods)), methods if labels else [""] * len(methods))
    ax.set_ylim(len(methods) - 0.5, -0.5)  # the first method on top
    better = BETTER.get(metric)
    ax.set_title(metric.replace("_", " ") + (f"\n({better} is better)" if better else ""), fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=8)


def _write(fig: Figure, path: Path) -> Path:
    """Render to memory, then write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    write_bytes(path, buffer.getvalue())
    return path
