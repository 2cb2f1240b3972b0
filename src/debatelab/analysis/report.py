"""One self-contained HTML report of one or more runs: provenance, figures, metrics, aggregates
and a transcript browser.

``report.html`` has no JavaScript and loads nothing: figures are embedded as base64 PNG data
URIs, the CSS is inline and a Content-Security-Policy forbids everything else. All model text is
autoescaped by jinja2 (never marked safe). Next to it: ``summary.csv`` (every run's aggregates
with a ``run`` column) and ``figures/`` (PNG + SVG of every figure).
"""

from __future__ import annotations

import base64
import json
import math
import numbers
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..errors import DebatelabError
from ..files import atomic_open
from ..request_counts import request_lines
from .frames import RunData, is_society, load
from .show import LOW_MASS, LOW_MASS_WHY, MASS_MEANING, survey_diagnostics
from .stats import aggregate

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
SURVEY_LABEL = "Survey \u2014 not part of the debate"
AGGREGATE_COLUMNS = ["topic", "role", "iteration", "n", "mean", "sd", "se", "ci_low", "ci_high", "invalid", "unit"]


def build_report(run_dirs: Sequence[Path], out_dir: Path, reference: Path | None = None,
                 overlay: bool = False, measure: str | None = None,
                 references: Mapping[Path, Path | None] | None = None, humans: Path | None = None,
                 panel: Path | None = None) -> Path:
    """Load every run's complete debates (and the optional reference run) and write the report;
    returns report.html. ``overlay`` draws the first two runs in one figure (solid vs dotted), for
    before/after comparisons of the same setting. ``measure`` overrides each run's survey measure
    (default: the paper's greedy T=0 answer where recorded). ``references`` gives runs their own
    reference run (Figure 8's is Figure 5's); runs it does not name get ``reference``. ``humans``:
    a CSV of human answer distributions (:func:`.yardsticks.load_human_distributions`) that each
    run's representativeness is scored against. ``panel``: a human discussion panel CSV
    (:func:`.panels.load_panel`) whose metrics and trajectories each run is shown beside."""
    if not run_dirs:
        raise DebatelabError("build_report needs at least one run directory")
    loaded: dict[Path, RunData] = {}

    def get(path: Path | None) -> RunData | None:  # each run read (and verified) once
        if path is None:
            return None
        if Path(path) not in loaded:
            loaded[Path(path)] = load(path, complete_only=True, measure=measure, society=True)
        return loaded[Path(path)]

    runs = [get(d) for d in run_dirs]
    ref = get(reference)
    own = {Path(d): get(r) for d, r in (references or {}).items()}
    refs = [own.get(Path(d), ref) for d in run_dirs]
    for run in runs:
        if run.surveys.empty:
            raise DebatelabError(f"run {run.run_dir} has no complete debate to report yet")
    if overlay and len(runs) < 2:
        raise DebatelabError("--overlay needs two run directories")
    out_dir = Path(out_dir)
    human_table = None
    if humans is not None:
        from .yardsticks import load_human_distributions

        human_table = load_human_distributions(humans)
    panel_data = None
    if panel is not None:
        from .panels import load_panel

        panel_data = load_panel(panel)
    try:
        return _write_report(runs, refs, out_dir, overlay, human_table, panel_data)
    except OSError as exc:
        raise DebatelabError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from None


def _write_report(runs: list[RunData], refs: list[RunData | None], out_dir: Path, overlay: bool,
                  humans: pd.DataFrame | None, panel: Any = None) -> Path:
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    labels = run_labels(runs)
    sections = [{**_run_section(run, label, i, ref, out_dir, humans), "panel": _panel(run, label, i, out_dir, panel)}
                for i, (run, label, ref) in enumerate(zip(runs, labels, refs))]
    both = _overlay(runs, labels, refs[0], out_dir) if overlay else None
    names = sorted({r.name for r in refs if r is not None})
    html = render(runs=sections, overlay=both, reference=", ".join(names) or None,
                  generated=_now(), survey_label=SURVEY_LABEL, low_mass=LOW_MASS,
                  low_mass_why=LOW_MASS_WHY, mass_meaning=MASS_MEANING)
    _atomic_write(out_dir / "summary.csv", summary_table(runs, labels).to_csv(index=False))
    path = out_dir / "report.html"
    _atomic_write(path, html)
    return path


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Run names, made unique with a ``#n`` suffix where two runs share one."""
    names = [run.name for run in runs]
    return [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def summary_table(runs: Sequence[RunData], labels: Sequence[str]) -> pd.DataFrame:
    """Every run's aggregates, with the survey measure they were computed from."""
    frames = [aggregate(run.surveys).assign(run=label, measure=run.measure) for run, label in zip(runs, labels)
              if not is_society(run.meta)]  # a society's panel is not debates' iterations: its section has its own
    if not frames:
        return pd.DataFrame(columns=["run", "measure", *AGGREGATE_COLUMNS])
    return pd.concat(frames, ignore_index=True)[["run", "measure", *AGGREGATE_COLUMNS]]


def render(**context: Any) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_number
    env.filters["pval"] = fmt_p
    return env.get_template(TEMPLATE).render(**context)


def _run_section(run: RunData, label: str, index: int, ref: RunData | None, out_dir: Path,
                 humans: pd.DataFrame | None) -> dict[str, Any]:
    from ..verdicts import fidelity_line
    from .figures import attitude_figure
    from .instruments import all_metrics

    if is_society(run.meta):  # a society: its own measures, not a debate's
        from ..society.report_section import society_section

        return {"label": label, "anchor": f"run-{index + 1}", "provenance": provenance(run), "reference": None,
                "survey": survey_diagnostics(run), "behaviour": None, "fidelity": None,
                "society": society_section(run.run_dir, out_dir, measure=run.measure,
                                           prefix=f"{index + 1:02d}-{_slug(label)}-society")}
    stem = out_dir / "figures" / f"{index + 1:02d}-{_slug(label)}-attitudes"
    figure = _figure(attitude_figure(run, labels=[label], reference=ref), stem)
    return {"society": None, "label": label, "anchor": f"run-{index + 1}", "provenance": provenance(run),
            "reference": ref.name if ref is not None else None,
            "survey": survey_diagnostics(run), "behaviour": _behaviour(run, label, index, out_dir),
            "fidelity": fidelity_line(str(run.config.get("model", ""))),
            "figure": figure, "metrics": metric_groups(all_metrics(run, reference=ref, humans=humans)),
            "aggregates": aggregate(run.surveys).to_dict("records"), "debates": transcripts(run)}


def _panel(run: RunData, label: str, index: int, out_dir: Path, panel: Any) -> dict[str, Any] | None:
    """The human panel beside this run: side-by-side metrics and the overlay figure."""
    if panel is None:
        return None
    from .panels import compare_with_panel, overlay_figure

    table = compare_with_panel(run.surveys, panel, agent_scale=run.scale)
    stem = out_dir / "figures" / f"{index + 1:02d}-{_slug(label)}-humans"
    figure = _figure(overlay_figure(run.surveys, panel, title=label, agent_scale=run.scale), stem)
    return {**figure, "source": panel.path.name, "rows": table.to_dict("records")}


def _behaviour(run: RunData, label: str, index: int, out_dir: Path) -> dict[str, str] | None:
    """The said-vs-reported figure, when a judge has scored the run (and surveys share its 0-10 scale)."""
    from .figures import behaviour_figure

    if run.stances.empty or run.scale.top != 10:
        return None
    stem = out_dir / "figures" / f"{index + 1:02d}-{_slug(label)}-stances"
    judges = ", ".join(sorted(map(str, run.stances["judge"].unique())))
    return {**_figure(behaviour_figure(run), stem), "judges": judges}


def _overlay(runs: Sequence[RunData], labels: Sequence[str], ref: RunData | None, out_dir: Path) -> dict[str, str]:
    from .figures import attitude_figure

    fig = attitude_figure(list(runs[:2]), labels=list(labels[:2]), reference=ref)
    return {**_figure(fig, out_dir / "figures" / "overlay-attitudes"), "caption": " vs ".join(labels[:2])}


def _figure(fig: Any, stem: Path) -> dict[str, str]:
    """Save PNG + SVG and return the PNG as a data URI (a plain string, autoescaped like any other)."""
    from .figures import save_figure

    paths = {Path(p).suffix: Path(p) for p in save_figure(fig, stem)}
    data = base64.b64encode(paths[".png"].read_bytes()).decode("ascii")
    return {"src": f"data:image/png;base64,{data}", "png": f"figures/{paths['.png'].name}",
            "svg": f"figures/{paths['.svg'].name}"}


def provenance(run: RunData) -> dict[str, Any]:
    meta, config = run.meta, run.config
    return {"name": run.name, "run_dir": str(run.run_dir), "model": config.get("model", "?"),
            "identity": _pretty_json(meta.get("model_identity", {})), "versions": meta.get("versions", {}),
            "python": meta.get("python", "?"), "platform": meta.get("platform", "?"),
            "created_at": _timestamp(meta.get("created_at")), "fingerprint": meta.get("config_fingerprint", "?"),
            "seed": config.get("seed", "?"), "config": _pretty_yaml(meta.get("config", {})),
            "debates": _debate_counts(run), "state": meta.get("state", "?"),
            "conditioning": conditioning_statement(meta.get("conditioning")),
            "requests": request_lines(meta.get("requests")),
            "left_out": [] if run.left_out is None else run.left_out.to_dict("records")}


def conditioning_statement(conditioning: Any) -> list[dict[str, Any]]:
    """The run summary's conditioning lines (:func:`debatelab.experiment.conditioning_lines`),
    each marked ``warning`` or not; one line saying so for a run from before they were recorded."""
    from ..experiment import conditioning_lines

    if not isinstance(conditioning, dict) or not all(isinstance(v, dict) for v in conditioning.values()):
        return [{"text": "not recorded (a run made before debatelab stored what each model conditions on)",
                 "warning": False}]
    return [{"text": line, "warning": line.startswith("WARNING:")} for line in conditioning_lines(conditioning)]


def _debate_counts(run: RunData) -> str:
    left = run.left_out if run.left_out is not None else pd.DataFrame({"status": []})
    if left.empty:
        return f"{len(run.debates)} complete"
    parts = ", ".join(f"{n} {status}" for status, n in left["status"].value_counts().sort_index().items())
    return f"{len(run.debates)} complete; left out of this report: {parts}"


def metric_groups(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows grouped by metric, in first-seen order; each row keeps its ``reading`` sentence."""
    has_wilcoxon = "p_wilcoxon" in table.columns
    groups = []
    for metric in table["metric"].drop_duplicates():
        rows = table[table["metric"] == metric].to_dict("records")
        for row in rows:
            row["p_wilcoxon"] = row.get("p_wilcoxon") if has_wilcoxon else None
        groups.append({"metric": metric, "rows": rows})
    return groups


def transcripts(run: RunData) -> list[dict[str, Any]]:
    """One entry per debate: its summary line and the turns and survey blocks in order."""
    agents = run.agents.sort_values(["debate_id", "agent_index"])
    debates = run.debates.sort_values(["topic", "repetition", "debate_id"])
    return [{**debate, "agents": agents[agents["debate_id"] == debate["debate_id"]].to_dict("records"),
             "items": _items(run.turns[run.turns["debate_id"] == debate["debate_id"]],
                             run.surveys[run.surveys["debate_id"] == debate["debate_id"]])}
            for debate in debates.to_dict("records")]


def _items(turns: pd.DataFrame, surveys: pd.DataFrame) -> list[dict[str, Any]]:
    """Turns by iteration; the surveys of iteration i come right after turn i (iteration 0 first)."""
    keyed = [((int(t["iteration"]), 0), {"kind": "turn", **t}) for t in turns.to_dict("records")]
    for iteration, group in surveys.groupby("iteration", sort=True):
        rows = group.sort_values("agent_index").to_dict("records")
        keyed.append(((int(iteration), 1), {"kind": "survey", "iteration": int(iteration), "rows": rows}))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def fmt_number(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "\u2014" if value is None else str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return "\u2014" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_p(value: Any) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value < 0.001:
        return "<0.001"
    return fmt_number(value)


def _pretty_yaml(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _pretty_json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)


def _timestamp(value: Any) -> str:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value) if value is not None else "?"


def _now() -> str:
    return datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:60] or "run"


def _atomic_write(path: Path, text: str) -> None:
    with atomic_open(path, newline="") as fh:
        fh.write(text)
