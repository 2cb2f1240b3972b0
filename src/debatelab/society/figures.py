"""Figures of a society run: party trajectories beside the classical models, the attitude
distribution over steps, and the network coloured by attitude.

Built on ``matplotlib.figure.Figure`` with an Agg canvas (as :mod:`analysis.figures`), so nothing
here touches pyplot's global state. Files are written by :func:`analysis.figures.save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..analysis.figures import ROLE_COLOURS, ROLE_LABELS, save_figure
from .frames import SocietyData
from .measures import party_summary

TOP = 10.0
MODEL_STYLES = {"degroot": "--", "friedkin_johnsen": ":", "deffuant": "-.", "pairwise_averaging": (0, (6, 2, 1, 2, 1, 2))}
MODEL_LABELS = {"degroot": "DeGroot", "friedkin_johnsen": "Friedkin\u2013Johnsen", "deffuant": "Deffuant",
                "pairwise_averaging": "pairwise averaging"}
MAX_NODES = 400
CMAP = "viridis"
MISSING = "#bbbbbb"


def _canvas(n_panels: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    cols = n_panels if n_panels <= 3 else 3
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[n_panels:]:
        fig.delaxes(ax)
    return fig, list(grid[:n_panels])


def trajectory_figure(panel: pd.DataFrame, classical: pd.DataFrame | None = None,
                      topic_names: Mapping[str, str] | None = None, title: str | None = None) -> Figure:
    """Per topic: each party's mean attitude with its 95 % t interval at every step (solid, with a
    band), and each classical model's party means (thin dashed/dotted lines, one style per model)."""
    summary = party_summary(panel)
    summary = summary[summary["party"] != "all"]
    topics = sorted(summary["topic"].astype(str).unique())
    if not topics:
        raise ValueError("no panel values to plot")
    parties_of = panel.drop_duplicates("agent").set_index("agent")["party"]
    fig, axes = _canvas(len(topics))
    models: list[str] = []
    for ax, topic in zip(axes, topics):
        mine = summary[summary["topic"].astype(str) == topic]
        for party in [p for p in ROLE_COLOURS if p in set(mine["party"])]:
            rows = mine[mine["party"] == party].sort_values("step")
            x, y = rows["step"].to_numpy(float), rows["mean"].to_numpy(float)
            colour = ROLE_COLOURS[party]
            ax.plot(x, y, color=colour, marker="o", markersize=3, linewidth=1.8)
            ax.fill_between(x, rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float), color=colour,
                            alpha=0.18, linewidth=0)
        if classical is not None and len(classical):
            models += _plot_models(ax, classical[classical["topic"].astype(str) == topic], parties_of)
        ax.set_title((topic_names or {}).get(topic, topic))
        ax.set_ylim(0.0, TOP)
        ax.set_xlabel("Step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(axis="y", alpha=0.3)
    parties = [p for p in ROLE_COLOURS if p in set(summary["party"])]
    handles = [Line2D([], [], color=ROLE_COLOURS[p], marker="o", label=f"{ROLE_LABELS[p]} (mean, 95 % CI)")
               for p in parties]
    handles += [Line2D([], [], color="#555555", linewidth=1.0, linestyle=MODEL_STYLES.get(m, "--"),
                       label=MODEL_LABELS.get(m, m)) for m in dict.fromkeys(models)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2 if len(topics) == 1 else 4),
               frameon=False, fontsize="small")
    fig.supylabel("Attitude (0-10)")
    if title:
        fig.suptitle(title)
    return fig


def _plot_models(ax: Axes, classical: pd.DataFrame, parties_of: pd.Series) -> list[str]:
    """Thin lines of each model's party means; returns the models drawn."""
    frame = classical.assign(party=classical["agent"].map(parties_of))
    means = frame.groupby(["model", "party", "step"], sort=False)["value"].mean().reset_index()
    drawn = []
    for model, group in means.groupby("model", sort=False):
        for party, rows in group.groupby("party"):
            rows = rows.sort_values("step")
            ax.plot(rows["step"], rows["value"], color=ROLE_COLOURS.get(str(party), "#555555"), linewidth=0.9,
                    linestyle=MODEL_STYLES.get(str(model), "--"), alpha=0.85)
        drawn.append(str(model))
    return drawn


def distribution_figure(panel: pd.DataFrame, topic_names: Mapping[str, str] | None = None,
                        title: str | None = None) -> Figure:
    """Per topic, a histogram of the valid attitudes at every step, drawn sideways around the
    step (a violin made of bars, one bar per integer 0..10, width proportional to the share of
    agents, on one scale per topic), so the 0..10 scale runs up the y axis and splitting or
    converging shows left to right."""
    valid = panel.dropna(subset=["value"])
    topics = sorted(panel["topic"].astype(str).unique())
    if not topics:
        raise ValueError("no panel values to plot")
    fig, axes = _canvas(len(topics))
    edges = np.arange(-0.5, TOP + 1.0, 1.0)
    for ax, topic in zip(axes, topics):
        mine = valid[valid["topic"].astype(str) == topic]
        steps = sorted(int(s) for s in panel.loc[panel["topic"].astype(str) == topic, "step"].unique())
        shares = {}
        for step in steps:
            counts, _ = np.histogram(mine.loc[mine["step"] == step, "value"].clip(0, TOP), bins=edges)
            shares[step] = counts / counts.sum() if counts.sum() else counts.astype(float)
        widest = max([float(v.max()) for v in shares.values()] + [1e-12])
        for step, share in shares.items():
            width = 0.9 * share / widest  # one scale per topic: the widest bar of any step spans 0.9 of a step
            ax.barh(edges[:-1] + 0.5, width, left=step - width / 2, height=0.85, color="#4c72b0", alpha=0.8)
        ax.set_title((topic_names or {}).get(topic, topic))
        ax.set_ylim(-0.6, TOP + 0.6)
        ax.set_xticks(steps)
        ax.set_xlabel("Step")
        ax.grid(axis="y", alpha=0.3)
    fig.supylabel("Attitude (0-10)")
    fig.supxlabel("bar width: share of agents at that step", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def network_sample(graph: nx.Graph, max_nodes: int = MAX_NODES, seed: int = 0) -> tuple[nx.Graph, bool]:
    """The graph itself, or (for more than ``max_nodes`` agents) the subgraph on a seeded random
    sample of ``max_nodes`` nodes; the flag says whether it was sampled."""
    if graph.number_of_nodes() <= max_nodes:
        return graph, False
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sorted(graph.nodes), size=max_nodes, replace=False)
    return graph.subgraph(int(n) for n in chosen).copy(), True


def network_figure(graph: nx.Graph, panel: pd.DataFrame, topic: str, steps: tuple[int, int] | None = None,
                   max_nodes: int = MAX_NODES, seed: int = 0, topic_name: str | None = None) -> Figure:
    """The network coloured by attitude (0..10, grey = invalid survey) at two steps, by default
    step 0 and the last step, on one seeded spring layout; node outlines give the party. For more
    than ``max_nodes`` agents a seeded random sample of them and the edges among them is drawn,
    and the title says so."""
    mine = panel[panel["topic"].astype(str) == str(topic)]
    if mine.empty:
        raise ValueError(f"no panel values for topic {topic!r}")
    steps = steps or (int(mine["step"].min()), int(mine["step"].max()))
    shown, sampled = network_sample(graph, max_nodes, seed)
    nodes = sorted(shown.nodes)
    layout = nx.spring_layout(shown, seed=seed)
    parties = mine.drop_duplicates("agent").set_index("agent")["party"].reindex(nodes)
    outline = [ROLE_COLOURS.get(str(p), "#555555") for p in parties]
    norm, cmap = Normalize(0.0, TOP), colormaps[CMAP]
    fig = Figure(figsize=(11.0, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    size = float(np.clip(12000.0 / max(len(nodes), 1), 24.0, 300.0))
    for ax, step in zip(axes, steps):
        values = mine[mine["step"] == step].set_index("agent")["value"].reindex(nodes).to_numpy(float)
        colours = [MISSING if np.isnan(v) else cmap(norm(v)) for v in values]
        # Faint enough that a dense graph (a complete one) stays a haze, not a black disc.
        nx.draw_networkx_edges(shown, layout, ax=ax, alpha=float(np.clip(150.0 / max(shown.number_of_edges(), 1),
                                                                      0.01, 0.25)), width=0.5)
        nx.draw_networkx_nodes(shown, layout, nodelist=nodes, ax=ax, node_color=colours, edgecolors=outline,
                               linewidths=0.7, node_size=size)
        ax.set_title(f"step {step}")
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="Attitude (0-10)", shrink=0.8)
    what = (f"random sample of {len(nodes)} of {graph.number_of_nodes()} agents (seed {seed}) and the "
            f"{shown.number_of_edges()} edges among them" if sampled else f"all {len(nodes)} agents")
    fig.suptitle(f"{topic_name or topic}: {what}; outline = party, grey = invalid survey")
    return fig


def society_figures(data: SocietyData, out_dir: str | Path, classical: pd.DataFrame | None = None,
                    prefix: str = "society", seed: int = 0) -> dict[str, list[Path]]:
    """Write every society figure (PNG + SVG) under ``out_dir``; returns the paths per figure:
    ``trajectories``, ``distribution`` and ``network-<topic>`` per topic."""
    out_dir = Path(out_dir)
    names = data.topic_names
    written = {
        "trajectories": save_figure(trajectory_figure(data.panel, classical, names), out_dir / f"{prefix}-trajectories"),
        "distribution": save_figure(distribution_figure(data.panel, names), out_dir / f"{prefix}-distribution"),
    }
    graph = data.graph()
    for topic in data.topics:
        fig = network_figure(graph, data.panel, topic, seed=seed, topic_name=names.get(topic))
        written[f"network-{topic}"] = save_figure(fig, out_dir / f"{prefix}-network-{_slug(topic)}")
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)).strip("-.")[:60] or "topic"
