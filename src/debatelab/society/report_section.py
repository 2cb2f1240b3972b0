"""The society section of the HTML report: what ``templates/society.html.j2`` renders.

:func:`society_section` reads a society run directory, computes its measures, attractor fit and
classical baselines, writes its figures (PNG + SVG) under ``out_dir/figures`` and returns plain
values (tables as lists of dicts, figures as base64 PNG data URIs) for the template, which
jinja2 autoescapes like the rest of the report.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..analysis.figures import save_figure
from .classical import compare_classical, run_classical
from .figures import distribution_figure, network_figure, trajectory_figure
from .frames import SocietyData, load_society
from .measures import default_attitudes, party_summary, society_attractor, society_measures

MEASURE_LABELS = {"greedy": "greedy T=0 answer (the paper's)", "expected": "expected score of the 0-10 distribution"}
CLASSICAL_PARAMETERS = {"self_weight": None, "susceptibility": 0.8, "epsilon": 3.0, "mu": 0.3, "influence": 0.3}


def society_section(run_dir: str | Path, out_dir: str | Path, measure: str | None = None, *,
                    seed: int = 0, n_boot: int = 1000, prefix: str = "society") -> dict[str, Any]:
    """Everything the society template needs, for the run in ``run_dir``; figure files go to
    ``out_dir/figures/<prefix>-*`` (one prefix per run of a report). ``measure`` (greedy | expected) overrides the run's.

    Keys: ``run_dir``, ``measure``, ``measure_label``, ``population``, ``steps``, ``network``
    (society.json's network config as text), ``topics`` (id, name, default_attitude,
    default_source), ``summary`` (:func:`.measures.party_summary` rows), ``measures``
    (:func:`.measures.society_measures` rows), ``attractor`` (:func:`.measures.society_attractor`
    rows), ``classical`` (:func:`.classical.compare_classical` rows at the last step),
    ``classical_parameters`` (text), ``figures`` (``trajectories``, ``distribution``: src, png,
    svg), ``networks`` (per topic: topic, name, src, png, svg)."""
    data = load_society(run_dir, measure=measure)
    figures_dir = Path(out_dir) / "figures"
    declared = data.declared_defaults()
    defaults = default_attitudes(data.panel, declared)
    classical = run_classical(data)
    names = data.topic_names
    graph = data.graph()
    return {
        "run_dir": str(data.run_dir), "measure": data.measure,
        "measure_label": MEASURE_LABELS.get(data.measure, data.measure),
        "population": len(data.agents), "steps": data.steps,
        "network": json.dumps(data.meta.get("network") or {}, sort_keys=True, default=str),
        "topics": [_topic(t, names, defaults, declared) for t in data.topics],
        "summary": party_summary(data.panel).to_dict("records"),
        "measures": society_measures(data.panel, graph, defaults).to_dict("records"),
        "attractor": society_attractor(data.panel, data.members(), defaults, seed=seed,
                                       n_boot=n_boot).to_dict("records"),
        "classical": compare_classical(data.panel, classical).to_dict("records"),
        "classical_parameters": ", ".join(f"{k} = {'equal' if v is None else v}"
                                          for k, v in CLASSICAL_PARAMETERS.items()),
        "figures": {
            "trajectories": figure_data(trajectory_figure(data.panel, classical, names),
                                        figures_dir / f"{prefix}-trajectories"),
            "distribution": figure_data(distribution_figure(data.panel, names), figures_dir / f"{prefix}-distribution"),
        },
        "networks": _networks(data, graph, figures_dir, seed, prefix),
    }


def figure_data(fig: Figure, stem: Path) -> dict[str, str]:
    """Save PNG + SVG and return the PNG as a data URI plus both files' paths relative to the
    report (the same shape as the report's own figures)."""
    paths = {Path(p).suffix: Path(p) for p in save_figure(fig, stem)}
    data = base64.b64encode(paths[".png"].read_bytes()).decode("ascii")
    return {"src": f"data:image/png;base64,{data}", "png": f"figures/{paths['.png'].name}",
            "svg": f"figures/{paths['.svg'].name}"}


def _topic(topic: str, names: dict[str, str], defaults: dict[str, float], declared: dict[str, float]) -> dict[str, Any]:
    d = defaults.get(topic, float("nan"))
    source = ("5 Default agents surveyed alone at step 0, outside the population" if topic in declared else
              "mean of the Default agents at step 0" if d == d else "unknown (no Default agent, none declared)")
    return {"id": topic, "name": names.get(topic, topic), "default_attitude": d, "default_source": source}


def _networks(data: SocietyData, graph: Any, figures_dir: Path, seed: int, prefix: str) -> list[dict[str, Any]]:
    out = []
    for index, topic in enumerate(data.topics):
        name = data.topic_names.get(topic, topic)
        fig = network_figure(graph, data.panel, topic, seed=seed, topic_name=name)
        out.append({"topic": topic, "name": name, **figure_data(fig, figures_dir / f"{prefix}-network-{index + 1:02d}")})
    return out
