"""One report, several figures, each with its own reference run (Figure 8's dashed line comes
from Figure 5's run, Figure 4's from Figure 3's), never another figure's."""

from __future__ import annotations

from pathlib import Path

import debatelab.analysis.figures as figures
from debatelab.analysis.report import build_report
from debatelab.config import load_config
from debatelab.experiment import run_experiment
from debatelab.llm.scripted import ScriptedLLM

from conftest import make_bank, write_config


def _run(tmp_path: Path, name: str, agents: list[str]) -> Path:
    bank = make_bank(tmp_path / f"{name}-bank.jsonl")
    cfg = load_config(write_config(tmp_path / f"{name}.yaml", personas=str(bank), agents=agents, name=name,
                                   repetitions=2))
    run_experiment(cfg, tmp_path / name, llm=ScriptedLLM())
    return tmp_path / name


def test_each_run_gets_its_own_reference(tmp_path, monkeypatch):
    three = _run(tmp_path, "fig3", ["republican", "democrat", "default"])
    two = _run(tmp_path, "fig4", ["republican", "democrat"])
    echo_default = _run(tmp_path, "fig5", ["republican", "republican", "default"])
    echo = _run(tmp_path, "fig8", ["republican", "republican"])
    drawn: dict[str, str | None] = {}
    original = figures.attitude_figure

    def recording(runs, labels=None, reference=None):
        drawn[labels[0]] = reference.name if reference is not None else None
        return original(runs, labels=labels, reference=reference)

    monkeypatch.setattr(figures, "attitude_figure", recording)
    html = build_report([three, two, echo_default, echo], tmp_path / "report",
                        references={two: three, echo: echo_default, three: None, echo_default: None}).read_text()
    assert drawn == {"fig3": None, "fig4": "fig3", "fig5": None, "fig8": "fig5"}
    sections = html.split('<section class="run"')[1:]
    assert "in run fig3." in sections[1] and "in run fig5." in sections[3]
    assert "Dashed line" not in sections[0] + sections[2]
