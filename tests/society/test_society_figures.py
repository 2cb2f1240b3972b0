"""Society figures are written, the large-network sample is seeded and announced, and the
report section carries what its template renders (autoescaped, no script)."""

from __future__ import annotations

import base64
import json

import networkx as nx
import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from test_measures import write_society

from debatelab.analysis.report import TEMPLATE_DIR, fmt_number, fmt_p
from debatelab.society.classical import run_classical
from debatelab.society.figures import (
    distribution_figure, network_figure, network_sample, society_figures, trajectory_figure)
from debatelab.society.frames import load_society
from debatelab.society.report_section import society_section

SECTION_KEYS = {"run_dir", "measure", "measure_label", "population", "steps", "network", "topics", "summary",
                "measures", "attractor", "classical", "classical_parameters", "figures", "networks"}


def test_society_figures_write_png_and_svg(tmp_path):
    data = load_society(write_society(tmp_path / "run", invalid=0.1))
    written = society_figures(data, tmp_path / "out", classical=run_classical(data))
    assert set(written) == {"trajectories", "distribution", "network-t1", "network-t2"}
    for paths in written.values():
        assert sorted(p.suffix for p in paths) == [".png", ".svg"]
        assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trajectories_draw_the_parties_and_the_classical_models(tmp_path):
    data = load_society(write_society(tmp_path / "run"))
    fig = trajectory_figure(data.panel, run_classical(data), data.topic_names)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert {"DeGroot", "Deffuant", "pairwise averaging"} <= set(labels)
    assert any(label.startswith("Republican") for label in labels)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["Topic t1", "Topic t2"] and axes[0].get_ylim() == (0.0, 10.0)
    # 3 parties solid + 4 models x 3 parties thin
    assert len(axes[0].get_lines()) == 3 + 4 * 3
    assert len(distribution_figure(data.panel).axes) == 2


def test_a_large_network_is_sampled_with_a_seed_and_says_so():
    g = nx.random_regular_graph(4, 450, seed=1)
    panel = pd.DataFrame({"topic": "t", "step": np.repeat([0, 2], 450), "agent": np.tile(np.arange(450), 2),
                          "party": "democrat", "value": np.r_[np.full(450, 7.0), np.full(450, np.nan)]})
    one, sampled = network_sample(g, 400, seed=3)
    two, _ = network_sample(g, 400, seed=3)
    assert sampled and one.number_of_nodes() == 400 and sorted(one.nodes) == sorted(two.nodes)
    assert all(g.has_edge(u, v) for u, v in one.edges()) and one.number_of_edges() < g.number_of_edges()
    fig = network_figure(g, panel, "t", seed=3)
    title = fig.get_suptitle()
    assert "random sample of 400 of 450 agents (seed 3)" in title and f"{one.number_of_edges()} edges" in title
    assert [ax.get_title() for ax in fig.axes[:2]] == ["step 0", "step 2"]
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    small = network_figure(nx.path_graph(450 - 50), panel[panel["agent"] < 400], "t")
    assert "all 400 agents" in small.get_suptitle()


def render(section: dict) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"], env.filters["pval"] = fmt_number, fmt_p
    return env.get_template("society.html.j2").render(society=section)


def test_society_section_gives_the_template_everything(tmp_path):
    run = write_society(tmp_path / "run", invalid=0.1,
                        meta={"topics": {"t1": "<script>alert(1)</script>", "t2": "Guns & roses"}})
    section = society_section(run, tmp_path / "report", n_boot=20)
    assert set(section) == SECTION_KEYS and section["population"] == 12 and section["steps"] == 3
    for fig in [*section["figures"].values(), *section["networks"]]:
        assert fig["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(fig["src"].split(",", 1)[1])[:4] == b"\x89PNG"
        assert (tmp_path / "report" / fig["png"]).is_file() and (tmp_path / "report" / fig["svg"]).is_file()
    assert [t["id"] for t in section["topics"]] == ["t1", "t2"] and len(section["networks"]) == 2
    assert section["topics"][0]["default_source"] == "mean of the Default agents at step 0"
    assert {r["party"] for r in section["summary"]} == {"republican", "democrat", "default", "all"}
    assert {r["model"] for r in section["classical"]} >= {"society", "degroot", "deffuant"}
    assert {r["metric"] for r in section["attractor"]} == {"attractor_pull", "attractor_influence", "attractor_drift"}
    json.dumps({k: v for k, v in section.items() if k != "figures"}, default=float)  # plain values
    html = render(section)
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "Guns &amp; roses" in html
    assert html.count("<img ") == 4 and "Classical models at the last step" in html
    assert render(None).strip() == ""


def test_the_section_honours_the_measure_override(tmp_path):
    run = write_society(tmp_path / "run", meta={"default_attitude": {"t1": 5.5}})
    greedy = society_section(run, tmp_path / "a", n_boot=10)
    expected = society_section(run, tmp_path / "b", measure="expected", n_boot=10)
    assert greedy["measure"] == "greedy" and expected["measure"] == "expected"
    assert greedy["topics"][0]["default_attitude"] == 5.5 and greedy["topics"][0]["default_source"].startswith("5 Default agents surveyed alone")
    means = [[r["mean"] for r in s["summary"]] for s in (greedy, expected)]
    assert not np.allclose(*means)
    assert {r["default_attitude"] for r in expected["measures"] if r["topic"] == "t1"} == {5.5}


def test_distribution_bars_are_shares_on_one_scale_per_topic():
    panel = pd.DataFrame({"topic": "t", "step": [0] * 4 + [1] * 4, "agent": list(range(4)) * 2, "party": "default",
                          "value": [2.0, 2.0, 2.0, np.nan, 2.0, 2.0, 8.0, 8.0]})
    ax = distribution_figure(panel).axes[0]
    bars = sorted((round(p.get_x() + p.get_width() / 2), round(p.get_y() + p.get_height() / 2), p.get_width())
                  for p in ax.patches if p.get_width() > 0)
    assert [(s, y) for s, y, _ in bars] == [(0, 2), (1, 2), (1, 8)]
    assert np.allclose([w for *_, w in bars], [0.9, 0.45, 0.45])  # the invalid survey is left out
