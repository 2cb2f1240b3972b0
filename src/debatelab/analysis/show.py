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
"""Below this mean option mass the model mostly wanted to say something other than a bare 0..10,
so a renormalised distribution (and its expected score) says little."""

MASS_MEANING = ("the probability of answering exactly one of 0..10 and ending the answer there "
                "(transformers backends: the number followed by the end-of-turn token; OpenAI echo "
                "and vLLM: the number not continued by another word or digit)")
"""What ``option_mass`` measures, per backend (one definition for all is a later issue's work)."""


LOW_MASS_WHY = ("the model mostly went on writing after the number, or said something else, so the "
                "distributions say little")


ANSWER_KINDS = {"0-10": "number 0..10", "pew4": "letter A-D (Pew's four answers)"}
"""What a bare answer is on each survey scale (the options the distribution is over)."""


def low_mass_warning(mass: float, scale: str = "0-10") -> str:
    why = LOW_MASS_WHY if scale == "0-10" else LOW_MASS_WHY.replace("the number", "the letter")
    return (f"mean option mass {mass:.3f} < {LOW_MASS}: only {mass:.1%} of the probability went to a bare "
            f"{ANSWER_KINDS.get(scale, 'answer option')} ending the answer ({why})")


def distribution_line(distributions: int, fallbacks: int, partial: int) -> str:
    line = f"distributions parsed from generated text (no logprobs): {fallbacks}/{distributions}"
    return line + (f"; partial (only the API's top-k options scored): {partial}/{distributions}" if partial else "")

MEASURE_LABELS = {"greedy": "greedy T=0 answer (the paper's measure)",
                  "expected": "expected score of the 0..10 distribution"}


def survey_diagnostics(run: RunData) -> dict[str, Any]:
    """How the surveys were measured and how much to trust them, for the report and ``show``."""
    s = run.surveys
    with_dist = s[s["source"].notna()]  # frames.load always has the column (NULL for old runs)
    mass = s["option_mass"].dropna()
    by_role = (s.groupby(["topic", "role"])["option_mass"].mean().dropna().reset_index()
               .to_dict("records") if len(mass) else [])
    mean_mass = float(mass.mean()) if len(mass) else None
    return {
        "measure": run.measure, "measure_label": MEASURE_LABELS[run.measure],
        "surveys": len(s), "invalid": int(s["value"].isna().sum()),
        "greedy_invalid": int((~s["valid"]).sum()) if s["method"].isin(["both", "generate"]).any() else None,
        "distributions": len(with_dist), "fallbacks": int((with_dist["source"] == "generated").sum()),
        "partial": int((with_dist["source"] == "top_k").sum()),
        "option_mass": mean_mass, "option_mass_by_role": by_role,
        "low_mass": mean_mass is not None and mean_mass < LOW_MASS,
        "scale": run.scale.id, "answer_kind": ANSWER_KINDS.get(run.scale.id, "answer option"),
    }


def diagnostic_lines(diag: dict[str, Any]) -> list[str]:
    lines = [f"measure: {diag['measure_label']}",
             f"invalid ({diag['measure']}): {diag['invalid']}/{diag['surveys']} surveys"]
    if diag["distributions"]:
        lines.append(distribution_line(diag["distributions"], diag["fallbacks"], diag["partial"]))
    if diag["option_mass"] is not None:
        lines.append(f"mean option mass: {diag['option_mass']:.3f}")
        if diag["low_mass"]:
            lines.append(f"WARNING: {low_mass_warning(diag['option_mass'], diag['scale'])}")
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
    """The table ``report`` shows, from complete debates only (a partial run otherwise averages
    later iterations over fewer debates); the first line counts what was left out."""
    run = load(run_dir, complete_only=True, measure=measure)
    left = run.left_out["status"].value_counts().sort_index() if run.left_out is not None else {}
    state = f"{len(run.debates)} complete" + "".join(f", {n} {status} (left out)" for status, n in left.items())
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
