"""Human panels: the CSV loader (rescaling, every bad input in one line), the side-by-side
metrics (checked by hand and, for the attractor, against known dynamics) and the overlay figure,
on synthetic panels whose humans intensify in same-party groups."""

import numpy as np
import pandas as pd
import pytest

from debatelab.analysis.panels import (SIDE_COLUMNS, compare_with_panel, composition_is_same, humanise, load_panel,
                                       overlay_figure, scale_bounds)
from debatelab.errors import DebatelabError
from debatelab.scales import PEW4

HEADER = "group,participant,party,composition,time,attitude,scale,topic\n"


def _panel(tmp_path, groups=12, topic="gun_violence", name="panel.csv"):
    """Same-party groups (R/R, D/D) drift outwards (intensify); mixed groups (R/D) are noise."""
    rng = np.random.default_rng(0)
    lines = []
    for g in range(groups):
        kind = ("republican", "democrat", "mixed")[g % 3]
        for p in range(3):
            party = kind if kind != "mixed" else ("republican", "democrat")[p % 2]
            composition = {"republican": "R/R", "democrat": "D/D", "mixed": "R/D"}[kind]
            x = (2.5 if party == "republican" else 5.5) + rng.normal(0, 0.3)
            for t in range(3):
                lines.append(f"g{g},p{p},{party.title()},{composition},{t},{min(7, max(1, x)):.3f},1-7,{topic}")
                step = 0.0 if kind == "mixed" else (-0.4 if party == "republican" else 0.4)
                x += step + rng.normal(0, 0.1)
    path = tmp_path / name
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def _agents(topic="gun_violence", debates=10):
    """Agents in same-party debates that moderate (the paper's anomaly), with a Default agent."""
    rows = []
    for d in range(debates):
        party, start, step = ("republican", 3.0, 0.5) if d % 2 else ("democrat", 7.5, -0.5)
        for i, (role, x) in enumerate(((party, start), (party, start + 0.2), ("default", 6.0))):
            for k in range(3):
                rows.append({"debate_id": f"a{d}", "topic": topic, "role": role, "agent_index": i,
                             "iteration": 3 * k, "value": x + (step * k if role != "default" else 0) + 0.01 * d})
    return pd.DataFrame(rows)


# -- loader ---------------------------------------------------------------------------------------


def test_loader_rescales_and_keeps_raw(tmp_path):
    panel = load_panel(_panel(tmp_path))
    s = panel.surveys
    assert set(s["role"]) == {"republican", "democrat"} and sorted(s["iteration"].unique()) == [0, 1, 2]
    assert np.allclose(s["value"], 10 * (s["raw_attitude"] - 1) / 6) and set(s["scale"]) == {"1-7"}
    assert panel.composition["g0"] == "R/R" and panel.composition["g2"] == "R/D"
    codes = s.groupby("debate_id")["agent_index"].apply(lambda a: tuple(sorted(a.unique())))
    assert all(c == (0, 1, 2) for c in codes) and s.loc[s["participant"] == "p2", "agent_index"].eq(2).all()
    assert s["probs"].isna().all() and s["score"].isna().all() and s["valid"].all()
    assert {"debate_id", "topic", "role", "iteration", "agent_index", "value", "raw_attitude"} <= set(s.columns)
    assert panel.same_party_groups() == {f"g{g}" for g in range(12) if g % 3 != 2}


def test_loader_scales_topics_and_missing_answers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("Group,Participant,Party,Composition,Time,Attitude,Scale\n"
                    "a,x,DEMOCRAT,,0,3,pew4\na,x,Democrat,,1,,pew4\n\n"
                    "b,x,independent,mixed,0,-3,-3 - 3\nb,x,independent,mixed,1.0,3,-3-3\n")
    s = load_panel(path).surveys.set_index(["debate_id", "iteration"])
    assert s.loc[("a", 0), "value"] == pytest.approx(10.0) and s.loc[("a", 0), "role"] == "democrat"
    assert np.isnan(s.loc[("a", 1), "value"]) and not s.loc[("a", 1), "valid"]  # a missing answer
    assert s.loc[("b", 0), "value"] == pytest.approx(0.0) and s.loc[("b", 1), "value"] == pytest.approx(10.0)
    assert set(s["scale"]) == {"pew4", "-3-3"} and set(s["topic"]) == {"unspecified"}
    assert scale_bounds("0 - 10") == (0, 10) and scale_bounds("5-5") is None and scale_bounds("1to7") is None


@pytest.mark.parametrize("rows, message", [
    ("g,p,R,R/R,0,8,1-7,t", "line 2, column 'attitude': 8 lies outside its scale 1-7"),
    ("g,p,R,R/R,0,inf,1-7,t", "column 'attitude': inf lies outside"),
    ("g,p,R,R/R,0,high,1-7,t", "line 2, column 'attitude': 'high' is not a number"),
    ("g,p,R,R/R,x,3,1-7,t", "line 2, column 'time': 'x' is not a whole number"),
    ("g,p,R,R/R,1.5,3,1-7,t", "column 'time': '1.5' is not a whole number"),
    ("g,p,R,R/R,-1,3,1-7,t", "column 'time': '-1' is not a whole number"),
    ("g,p,R,R/R,0,3,7-1,t", "column 'scale': '7-1' is not LOW-HIGH"),
    ("g,p,R,R/R,0,3,likert,t", "column 'scale': 'likert' is not LOW-HIGH"),
    ("g,p,,R/R,0,3,1-7,t", "line 2, column 'party': the cell is empty"),
    ("g,,R,R/R,0,3,1-7,t", "column 'participant': the cell is empty"),
    ("g,p,R,R/R,0,3,1-7,t\ng,p,R,R/R,0,4,1-7,t", "line 3: participant 'p' of group 'g' has two attitudes at time 0"),
    ("g,p,R,R/R,0,3,1-7,t\ng,p,R,R/R,1,4,0-10,t", "line 3, column 'scale': participant 'p' of group 'g' uses two"),
    ("g,p,R,R/R,0,3,1-7,t\ng,p,D,R/R,1,4,1-7,t", "line 3, column 'party': participant 'p' of group 'g' has two"),
    ("g,p,R,R/R,0,3,1-7,t\ng,q,R,R/D,0,4,1-7,t", "line 3, column 'composition': group 'g' has two compositions"),
    ("g,p,R,R/R,0,3,1-7,t\ng,q,R,R/R,0,4,1-7,u", "column 'topic': group 'g' has two topics"),
    ("g,p,R,R/R,0,3,1-7,t,extra", "is not a CSV table"),
    ("", "holds no rows"),
])
def test_bad_input_is_one_line(tmp_path, rows, message):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + rows + "\n")
    with pytest.raises(DebatelabError, match=message) as info:
        load_panel(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_columns_and_files(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("group,participant\ng,p\n")
    with pytest.raises(DebatelabError, match="lacks column 'party'"):
        load_panel(path)
    with pytest.raises(DebatelabError, match="not found"):
        load_panel(tmp_path / "absent.csv")


@pytest.mark.parametrize("text, same", [("R/R", True), ("D / D / D", True), ("same-party", True), ("R/D", False),
                                        ("rep vs dem", False), ("mixed", False), ("", None), ("group A", None)])
def test_composition(text, same):
    assert composition_is_same(text) is same


# -- side by side -------------------------------------------------------------------------------


def _by_hand_change(surveys):
    """Mean over groups of the group's mean (last − first) over participants valid at both ends."""
    ends = surveys.pivot_table(index=["debate_id", "agent_index"], columns="iteration", values="value")
    diff = (ends[ends.columns.max()] - ends[ends.columns.min()]).dropna()
    return diff.groupby(level="debate_id").mean().mean()


def test_side_by_side_metrics(tmp_path):
    panel = load_panel(_panel(tmp_path))
    table = compare_with_panel(_agents(), panel, n_boot=100)
    assert list(table.columns) == SIDE_COLUMNS and {"agents", "humans"} == set(table["source"])
    echo = table[table["metric"] == "echo_chamber_index"].set_index(["source", "role"])
    assert echo.loc[("humans", "republican"), "estimate"] > 0 and echo.loc[("humans", "democrat"), "estimate"] > 0
    assert echo.loc[("humans", "republican"), "ci_low"] > 0  # they intensify, clearly
    assert echo.loc[("agents", "republican"), "estimate"] < 0  # the paper's anomaly: moderation
    assert echo.loc[("humans", "republican"), "n"] == 4  # the four R/R groups only, not the mixed ones
    change = table[table["metric"] == "change_first_to_last"].set_index(["source", "role"])
    humans = panel.surveys
    expected = _by_hand_change(humans[humans["role"] == "democrat"])
    assert change.loc[("humans", "democrat"), "estimate"] == pytest.approx(expected)
    assert change.loc[("humans", "democrat"), "n"] == 8  # 4 D/D groups + 4 mixed groups with a Democrat
    assert change.loc[("agents", "republican"), "estimate"] == pytest.approx(1.0)
    reading = change.loc[("humans", "democrat"), "reading"]
    assert "participants" in reading and "groups" in reading and "agents" not in reading
    assert {"attractor_pull", "attractor_influence"} <= set(table[table["source"] == "humans"]["metric"])
    assert "attractor_drift" not in set(table["metric"]) and set(table["topic"]) == {"gun_violence"}


def test_pooled_when_topics_differ_and_pew4_agents(tmp_path):
    panel = load_panel(_panel(tmp_path, topic="school_uniforms"))
    agents = pd.concat([_agents("gun_violence"), _agents("racism").assign(debate_id=lambda f: "r" + f["debate_id"])])
    table = compare_with_panel(agents, panel, n_boot=50)
    assert set(table["topic"]) == {"all"}
    pull = table[(table["metric"] == "attractor_pull") & (table["source"] == "agents")]
    assert not pull.empty and not pull["reading"].str.contains(r"\(0\.00\)").any()
    on_pew = _agents().assign(value=lambda f: f["value"] * 3 / 10)
    scaled = compare_with_panel(on_pew, panel, agent_scale=PEW4, n_boot=20)
    row = scaled[(scaled["metric"] == "change_first_to_last") & (scaled["source"] == "agents")
                 & (scaled["role"] == "republican")].iloc[0]
    assert row["estimate"] == pytest.approx(1.0)  # back on 0..10


def test_any_party_label_gets_an_echo_index(tmp_path):
    path = _panel(tmp_path)
    path.write_text(path.read_text().replace("Republican", "Disagree").replace("Democrat", "Agree"))
    table = compare_with_panel(_agents(), load_panel(path), n_boot=20)
    echo = table[(table["metric"] == "echo_chamber_index") & (table["source"] == "humans")]
    assert set(echo["role"]) == {"agree", "disagree"} and (echo["estimate"] > 0).all()


def test_a_panel_surveyed_once_has_no_change(tmp_path):
    path = tmp_path / "once.csv"
    path.write_text(HEADER + "g,a,republican,R/R,0,3,1-7,gun_violence\ng,b,republican,R/R,0,4,1-7,gun_violence\n")
    table = compare_with_panel(_agents(), load_panel(path), n_boot=20)
    humans = table[table["source"] == "humans"].set_index("metric")
    assert humans.loc["change_first_to_last", "n"] == 0 and np.isnan(humans.loc["echo_chamber_index", "estimate"])
    assert "not computed" in humans.loc["change_first_to_last", "reading"]


def test_human_attractor_recovers_known_influence(tmp_path):
    pytest.importorskip("debatelab.analysis.attractor")  # the fit itself lives there
    rng = np.random.default_rng(3)
    lines = []
    for g in range(60):
        x = rng.uniform(1, 9, 3)
        for t in range(4):
            lines += [f"g{g},p{i},{('republican', 'democrat')[i % 2]},mixed,{t},{v:.4f},0-10,t" for i, v in enumerate(x)]
            m = (x.sum() - x) / 2
            x = np.clip(x + 0.1 * (5 - x) + 0.3 * (m - x) + rng.normal(0, 0.2, 3), 0, 10)
    path = tmp_path / "known.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    table = compare_with_panel(_agents(), load_panel(path), n_boot=200)
    fit = table[(table["source"] == "humans") & (table["role"] == "all")].set_index("metric")
    for metric, truth in (("attractor_influence", 0.3), ("attractor_pull", 0.1)):
        assert fit.loc[metric, "ci_low"] <= truth <= fit.loc[metric, "ci_high"]
        assert abs(fit.loc[metric, "estimate"] - truth) < 0.06
    assert "resting attitude" in fit.loc["attractor_pull", "reading"]
    assert "model's default" not in fit.loc["attractor_pull", "reading"]


def test_humanise():
    assert humanise("Republican agents moved (n=5 debates). A single debate: no interval.") == \
        "Republican participants moved (n=5 groups). A single group: no interval."


# -- figure ---------------------------------------------------------------------------------------


def _labelled(ax):
    handles, labels = ax.get_legend_handles_labels()
    return {label: handle for handle, label in zip(handles, labels)}


def test_overlay_figure(tmp_path):
    fig = overlay_figure(_agents(), load_panel(_panel(tmp_path)), title="t")
    assert len(fig.axes) == 1
    lines = _labelled(fig.axes[0])
    assert set(lines) == {"Republican (agents)", "Democrat (agents)", "Default (agents)", "Republican (humans)",
                          "Democrat (humans)"}
    assert lines["Republican (agents)"].lines[0].get_linestyle() == "-"
    assert lines["Republican (humans)"].lines[0].get_linestyle() == "--"
    x = lines["Democrat (humans)"].lines[0].get_xdata()
    assert list(x) == [0.0, 0.5, 1.0] and list(lines["Democrat (agents)"].lines[0].get_xdata()) == [0.0, 0.5, 1.0]
    fig.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_figure_one_panel_per_topic(tmp_path):
    agents = pd.concat([_agents("gun_violence"), _agents("racism").assign(debate_id=lambda f: "r" + f["debate_id"])])
    fig = overlay_figure(agents, load_panel(_panel(tmp_path)))
    assert [ax.get_title() for ax in fig.axes] == ["gun_violence", "racism"]
    assert not any("(humans)" in label for label in _labelled(fig.axes[1]))  # no human data on racism


def test_analyze_with_a_panel(tmp_path, capsys):
    import json

    import yaml

    from debatelab.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": "opinion-sim", "topics": ["gun_violence"], "rounds": 2,
                                      "agents": ["republican", "republican"], "repetitions": 6}))
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = tmp_path / "m.json"
    assert main(["analyze", str(tmp_path / "run"), "--panel", str(_panel(tmp_path)), "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    humans = [r for r in records if r["source"] == "humans" and r["metric"] == "panel:echo_chamber_index"]
    assert humans and all(r["estimate"] > 0 for r in humans)
    assert any(r["source"] == "agents" and r["metric"] == "echo_chamber_index" for r in records)


def test_report_shows_the_panel(tmp_path):
    import yaml

    from debatelab.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": "opinion-sim", "topics": ["gun_violence"], "rounds": 2,
                                      "agents": ["republican", "democrat"], "repetitions": 4}))
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "run"), "--panel", str(_panel(tmp_path)), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Beside humans (panel.csv)" in html and "humans" in html
    assert list((out / "figures").glob("*-humans.png"))
