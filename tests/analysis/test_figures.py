"""Attitude figures: values read back from the matplotlib artists must match ``aggregate``."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer

from conftest import make_bank, write_config
from debatelab.analysis import aggregate, load
from debatelab.analysis.figures import (REFERENCE_LABEL, ROLE_COLOURS, ROLE_LABELS, attitude_figure,
                                        reference_levels, save_figure)
from debatelab.config import load_config
from debatelab.experiment import run_experiment
from debatelab.llm.base import GenerateRequest, ScoreRequest
from debatelab.llm.scripted import ScriptedLLM, default_reply
from debatelab.prompts import SURVEY_PREFIX

TOPICS = ["gun_violence", "racism", "climate_change", "illegal_immigration"]
LABEL_ROLE = {v: k for k, v in ROLE_LABELS.items()}


# The paper's figures draw Republicans red, Democrats blue and the Default agent grey. Written out
# here, not read from the module, so a changed or swapped colour fails the drawing tests below.
PAPER_COLOURS = {"republican": "#c0392b", "democrat": "#2e6fbd", "default": "#333333"}


def _mode(text: str, shift: int) -> float:
    """Republicans answer low, Democrats high, Default in the middle, with prompt-dependent jitter
    so every (topic, role, iteration) has a non-zero standard error."""
    base = 2 if "lifelong republican" in text else 8 if "lifelong democrat" in text else 5
    jitter = int.from_bytes(hashlib.sha256(text.encode()).digest()[:2], "big") / 65535 * 3 - 1.5
    return min(10.0, max(0.0, base + jitter + shift))


def partisan_scores(shift: int = 0):
    def score(request: ScoreRequest) -> list[float]:
        mode = _mode(request.prompt.flat_text(), shift)
        weights = [math.exp(-1.5 * abs(i - mode)) for i in range(11)]
        return [math.log(w / sum(weights)) for w in weights]
    return score


def partisan_replies(shift: int = 0):
    """The greedy survey answer (the measure the figures plot) is the distribution's mode."""
    def reply(request: GenerateRequest) -> str:
        if request.prompt.assistant_prefix == SURVEY_PREFIX:
            return str(round(_mode(request.prompt.flat_text(), shift)))
        return default_reply(request)
    return reply


def _run(root: Path, name: str, agents: list[str], topics: list[str], shift: int = 0):
    root.mkdir()
    cfg = load_config(write_config(root / "c.yaml", name=name, personas=str(make_bank(root / "b.jsonl", per_party=6)),
                                   topics=topics, agents=agents, rounds=2, repetitions=6))
    run_experiment(cfg, root / "run", llm=ScriptedLLM(reply_fn=partisan_replies(shift), score_fn=partisan_scores(shift)))
    data = load(root / "run")
    assert data.measure == "greedy" and data.surveys["valid"].all()
    return data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figures")
    return {"three": _run(tmp / "three", "three", ["republican", "democrat", "default"], TOPICS),
            "tuned": _run(tmp / "tuned", "tuned", ["republican", "democrat", "default"], TOPICS, shift=-2),
            "two": _run(tmp / "two", "two", ["republican", "democrat"], TOPICS[:3]),
            "echo": _run(tmp / "echo", "echo", ["republican", "republican", "default"], TOPICS[:2])}


def _bars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _half_widths(container: ErrorbarContainer) -> np.ndarray:
    segments = container.lines[2][0].get_segments()
    return np.array([(seg[1][1] - seg[0][1]) / 2 for seg in segments])


def _dashed_levels(ax) -> list[float]:
    return [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_one_panel_per_topic_in_a_2x2_grid_with_fixed_limits(runs):
    fig = attitude_figure(runs["three"])
    assert len(fig.axes) == 4
    cells = set()
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        assert spec.get_geometry()[:2] == (2, 2)
        cells.add((spec.rowspan.start, spec.colspan.start))
        assert ax.get_ylim() == (0.0, 10.0)
        assert list(ax.get_xticks()) == [0, 3, 6]
    assert cells == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "", "Iteration", "Iteration"]
    assert fig.get_supylabel() == "Attitude (0-10), greedy T=0 answer"  # names the measure plotted
    assert [ax.get_title() for ax in fig.axes] == ["Gun violence", "Racism", "Climate change", "Illegal immigration"]


def test_three_topics_lie_in_one_row(runs):
    fig = attitude_figure(runs["two"])
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes] == [(1, 3)] * 3


def test_role_colours_are_the_papers_red_blue_grey():
    assert ROLE_COLOURS == PAPER_COLOURS
    assert ROLE_LABELS == {"republican": "Republican", "democrat": "Democrat", "default": "Default"}


@pytest.mark.parametrize("name, unit", [("three", "agent"), ("echo", "agent"), ("echo", "debate")])
def test_means_and_error_bars_equal_aggregate_with_role_colours(runs, name, unit):
    data = runs[name]
    table = aggregate(data.surveys, unit=unit)
    if name == "echo":  # two Republican seats: the unit must change n and hence the bars
        other = aggregate(data.surveys, unit="debate" if unit == "agent" else "agent")
        assert not np.allclose(table["se"], other["se"])
    fig = attitude_figure(data, unit=unit)
    assert len(fig.axes) == data.surveys["topic"].nunique()
    for ax, topic in zip(fig.axes, TOPICS):
        bars = _bars(ax)
        assert sorted(LABEL_ROLE[c.get_label()] for c in bars) == sorted(set(data.surveys["role"]))
        for container in bars:
            role = LABEL_ROLE[container.get_label()]
            line = container.lines[0]
            expected = table[(table["topic"] == topic) & (table["role"] == role)].sort_values("iteration")
            assert (expected["se"] > 0).all()  # else a half-width check would prove nothing
            np.testing.assert_allclose(line.get_xdata(), expected["iteration"])
            np.testing.assert_allclose(line.get_ydata(), expected["mean"])
            np.testing.assert_allclose(_half_widths(container), expected["se"])
            assert to_hex(line.get_color()) == PAPER_COLOURS[role]
            assert to_hex(container.lines[2][0].get_color()[0]) == PAPER_COLOURS[role]
            assert container.lines[1], "error bars need caps"
    # Roles really differ, so a swapped colour or label would be caught above.
    means = table[table["iteration"] == 0].groupby("role")["mean"].mean()
    assert means["republican"] < means["default"] < means.get("democrat", np.inf)


def test_overlay_draws_first_run_solid_and_second_dotted(runs):
    fig = attitude_figure([runs["three"], runs["tuned"]], labels=["before", "after"])
    tuned = aggregate(runs["tuned"].surveys)
    for ax, topic in zip(fig.axes, TOPICS):
        styles: dict[str, list[str]] = {}
        for container in _bars(ax):
            role = LABEL_ROLE[container.get_label()]
            styles.setdefault(role, []).append(container.lines[0].get_linestyle())
            if container.lines[0].get_linestyle() == ":":
                expected = tuned[(tuned["topic"] == topic) & (tuned["role"] == role)].sort_values("iteration")
                np.testing.assert_allclose(container.lines[0].get_ydata(), expected["mean"])
        assert styles == {role: ["-", ":"] for role in PAPER_COLOURS}
    assert len(fig.legends) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["Republican", "Democrat", "Default", "before", "after"]


def test_reference_line_at_default_pre_debate_mean_only_without_default_agent(runs):
    ref = runs["three"].surveys
    expected = ref[(ref["role"] == "default") & (ref["iteration"] == 0)].groupby("topic")["value"].mean()
    assert reference_levels(runs["three"]) == pytest.approx(expected.to_dict())

    two_way = attitude_figure(runs["two"], reference=runs["three"])
    for ax, topic in zip(two_way.axes, TOPICS[:3]):
        assert _dashed_levels(ax) == pytest.approx([expected[topic]])
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert to_hex(dashed[0].get_color()) == PAPER_COLOURS["default"]
        assert {LABEL_ROLE[c.get_label()] for c in _bars(ax)} == {"republican", "democrat"}
    assert REFERENCE_LABEL in [t.get_text() for t in two_way.legends[0].get_texts()]

    three_way = attitude_figure(runs["three"], reference=runs["three"])
    assert all(_dashed_levels(ax) == [] for ax in three_way.axes)
    assert REFERENCE_LABEL not in [t.get_text() for t in three_way.legends[0].get_texts()]


def test_reference_mapping_and_no_reference(runs):
    fig = attitude_figure(runs["two"], reference={"racism": 7.5})
    assert [_dashed_levels(ax) for ax in fig.axes] == [[], [7.5], []]
    assert all(_dashed_levels(ax) == [] for ax in attitude_figure(runs["two"]).axes)


def test_save_figure_writes_png_and_svg(runs, tmp_path):
    fig = attitude_figure(runs["two"], reference=runs["three"], title="Two-way debates")
    paths = save_figure(fig, tmp_path / "nested" / "dir" / "fig4")
    assert paths == [tmp_path / "nested" / "dir" / "fig4.png", tmp_path / "nested" / "dir" / "fig4.svg"]
    png = paths[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1024
    svg = paths[1].read_text()
    assert "<svg" in svg and "Two-way debates" in svg


def test_rejects_more_than_two_runs(runs):
    with pytest.raises(ValueError):
        attitude_figure([runs["three"]] * 3)
