"""The forest plot: one panel per metric in order, a row per method, whiskers at the interval, a
dashed line at the baseline's estimate; written atomically; bad tables are one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from debatelab.errors import DebatelabError
from debatelab.lab.forest import forest_figure, forest_plot
from debatelab.lab.measures import COLUMNS, METRICS

METHODS = ("baseline", "contrastive", "anchored")
ROLES = ("republican", "democrat")


def _table(missing: str | None = "perplexity") -> pd.DataFrame:
    rows = []
    for i, method in enumerate(METHODS):
        for j, metric in enumerate(METRICS):
            for k, role in enumerate(ROLES):
                est = np.nan if metric == missing else 0.1 * (i + 1) + j + 0.01 * k
                rows.append({"method": method, "metric": metric, "role": role, "estimate": est, "low": est - 0.05,
                             "high": est + 0.05, "n": 10, "reading": "r"})
    return pd.DataFrame(rows, columns=COLUMNS)


def _lines(ax):
    return [(list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle()) for line in ax.get_lines()]


def test_one_panel_per_metric_with_whiskers_and_the_baseline_line():
    table = _table()
    fig = forest_figure(table)
    axes = fig.get_axes()
    assert len(axes) == len(METRICS)
    assert [ax.get_title().split("\n")[0] for ax in axes] == [m.replace("_", " ") for m in METRICS]
    assert "(lower is better)" in axes[METRICS.index("attractor_pull")].get_title()
    assert "(higher is better)" in axes[METRICS.index("echo_chamber_index")].get_title()
    assert [t.get_text() for t in axes[0].get_yticklabels()] == list(METHODS)
    pull = axes[METRICS.index("attractor_pull")]
    lines = _lines(pull)
    row = table[(table["metric"] == "attractor_pull") & (table["method"] == "contrastive")
                & (table["role"] == "democrat")]
    low, high = float(row["low"].iloc[0]), float(row["high"].iloc[0])
    whiskers = [x for x, y, style in lines if len(x) == 2 and x[0] != x[1]]
    assert any(x == pytest.approx([low, high]) for x in whiskers) and len(whiskers) == len(METHODS) * len(ROLES)
    dashed = sorted(x[0] for x, _, style in lines if style == "--")
    base = table[(table["metric"] == "attractor_pull") & (table["method"] == "baseline")]["estimate"]
    assert dashed == pytest.approx(sorted(base))
    # the first method on top, each role at its own height within the method's row
    ys = sorted({round(y[0], 6) for x, y, style in lines if len(x) == 2 and x[0] != x[1]})
    assert len(ys) == len(METHODS) * len(ROLES) and pull.get_ylim()[0] > pull.get_ylim()[1]


def test_a_metric_without_estimates_says_so():
    axes = forest_figure(_table("perplexity")).get_axes()
    texts = [t.get_text() for t in axes[METRICS.index("perplexity")].texts]
    assert texts == ["not computed"] and not axes[METRICS.index("perplexity")].get_lines()


def test_the_png_is_written_atomically_over_an_old_one(tmp_path):
    path = tmp_path / "out" / "forest.png"
    path.parent.mkdir()
    path.write_bytes(b"old")
    assert forest_plot(_table(), path) == path
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["forest.png"]  # no temp file left


@pytest.mark.parametrize("table, baseline, needle", [
    (_table().drop(columns="high"), "baseline", "lacks column(s) high"),
    (_table().iloc[:0], "baseline", "no rows"),
    (_table(), "none", "no method named 'none'"),
])
def test_bad_tables_are_one_line(tmp_path, table, baseline, needle):
    with pytest.raises(DebatelabError) as info:
        forest_plot(table, tmp_path / "f.png", baseline=baseline)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "f.png").exists()
