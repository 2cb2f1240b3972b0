"""A run's results as text: mean ± SE per topic, role and iteration, and the survey diagnostics
(measure, invalid answers, distribution fallbacks, option mass) that say how far to trust them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .frames import RunData, load
from .stats import aggregate

LOW_MASS = 0.5
"""Below this mean option mass the model mostly wanted to say something other than 0..10, so a
renormalised distribution (and its expected score) says little."""

MEASURE_LABELS = {"greedy": "greedy T=0 answer (the paper's measure)",
                  "expected": "expected score of the 0..10 distribution"}


def survey_diagnostics(run: RunData) -> dict[str, Any]:
    """How the surveys were measured and how much to trust them, for the report and ``show``."""
    s = run.surveys
    with_dist = s[s["source"].notna()] if "source" in s else s.iloc[0:0]
    mass = s["option_mass"].dropna()
    by_role = (s.groupby(["topic", "role"])["option_mass"].mean().dropna().reset_index()
               .to_dict("records") if len(mass) else [])
    mean_mass = float(mass.mean()) if len(mass) else None
    return {
        "measure": run.measure, "measure_label": MEASURE_LABELS[run.measure],
        "surveys": len(s), "invalid": int(s["value"].isna().sum()),
        "greedy_invalid": int((~s["valid"]).sum()) if s["method"].isin(["both", "generate"]).any() else None,
        "distributions": len(with_dist), "fallbacks": int((with_dist["source"] == "generated").sum()),
        "option_mass": mean_mass, "option_mass_by_role": by_role,
        "low_mass": mean_mass is not None and mean_mass < LOW_MASS,
    }


def diagnostic_lines(diag: dict[str, Any]) -> list[str]:
    lines = [f"measure: {diag['measure_label']}",
             f"invalid ({diag['measure']}): {diag['invalid']}/{diag['surveys']} surveys"]
    if diag["distributions"]:
        lines.append(f"distributions parsed from generated text (no logprobs): "
                     f"{diag['fallbacks']}/{diag['distributions']}")
    if diag["option_mass"] is not None:
        lines.append(f"mean option mass: {diag['option_mass']:.3f}")
        if diag["low_mass"]:
            lines.append(f"WARNING: mean option mass {diag['option_mass']:.3f} < {LOW_MASS}: the model mostly "
                         "wanted to answer something other than 0..10, so the distributions say little")
    return lines


def results_table(run: RunData) -> str:
    """Mean ± SE per topic, role and iteration (n and invalid beside), as aligned text."""
    table = aggregate(run.surveys)
    if table.empty:
        return "(no surveys yet)"
    rows = [(r.topic, r.role, int(r.iteration), _pm(r.mean, r.se), int(r.n), int(r.invalid))
            for r in table.itertuples()]
    header = ("topic", "role", "iteration", "mean ± SE", "n", "invalid")
    return _align([header, *rows])


def show_run(run_dir: Path, measure: str | None = None) -> str:
    run = load(run_dir, measure=measure)
    counts = run.debates["status"].value_counts().sort_index()
    state = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no debates"
    lines = [f"run {run.name} ({run_dir}): {state}", *diagnostic_lines(survey_diagnostics(run)), "",
             results_table(run)]
    return "\n".join(lines)


def _pm(mean: float, se: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f} ± {se:.2f}" if np.isfinite(se) else f"{mean:.2f} ± -"


def _align(rows: list[tuple[Any, ...]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)
