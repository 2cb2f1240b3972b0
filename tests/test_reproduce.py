"""Paper presets: every one runs end to end (scripted backend, reduced size) into one folder.
What each preset holds, against the paper, is in tests/test_presets.py."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import yaml

import debatelab
from debatelab.errors import DebatelabError
from debatelab.personas import load_bank
from debatelab.reproduce import reproduce, resolve_presets

PRESETS = Path(__file__).resolve().parents[1] / "experiments" / "paper"
EXPECTED = {"fig3_three_way", "fig4_two_way", "fig5_echo_republican_default", "fig7_mistral_three_way",
            "fig7_solar_three_way", "fig8_echo_republican", "fig9_echo_democrat_default", "fig9b_echo_democrat"}


def _stored_config(run_dir: Path) -> dict:
    value = sqlite3.connect(run_dir / "run.sqlite").execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0]
    return json.loads(value)


def test_every_paper_preset_exists():
    assert {p.stem for p in resolve_presets([], PRESETS)} == EXPECTED


def test_reproduce_all_presets_reduced_with_shared_bank(tmp_path):
    summaries = reproduce([], tmp_path / "paper", model="scripted", repetitions=2, preset_dir=PRESETS)
    assert {s.run_dir.name for s in summaries} == EXPECTED
    assert all(s.complete == s.debates == 4 * 2 for s in summaries)
    # one model, one bank: one persona per seat and repetition of each party's largest roster, here
    # the echo chambers' 2 seats x 2 repetitions, so they too seat every persona exactly once
    assert sorted(p.name for p in (tmp_path / "paper").glob("personas*.jsonl")) == ["personas.jsonl"]
    bank = load_bank(tmp_path / "paper" / "personas.jsonl")
    assert Counter(p.party for p in bank) == {"republican": 4, "democrat": 4}
    echo = debatelab.load(tmp_path / "paper" / "fig8_echo_republican")
    assert set(echo.surveys.role) == {"republican"} and echo.surveys.iteration.max() == 8
    per_topic = echo.agents.merge(echo.debates[["debate_id", "topic"]], on="debate_id").groupby("topic")["persona_id"]
    assert all(sorted(ids) == sorted(p.id for p in bank if p.party == "republican") for _, ids in per_topic)
    used = set(echo.agents.persona_id) | set(debatelab.load(tmp_path / "paper" / "fig3_three_way").agents.persona_id.dropna())
    assert used <= {p.id for p in bank}  # every run seats agents from the one shared bank
    # --model runs Figure 7's presets on that model too, without their own model's 8-bit loading
    assert _stored_config(tmp_path / "paper" / "fig7_mistral_three_way")["backend"]["quantization"] == "none"


def test_presets_on_different_models_get_a_bank_each(tmp_path):
    """Without --model every preset runs on its own model (Figure 7: Mistral, Solar), and each
    model's agents are written by that model, as the paper's were."""
    presets = tmp_path / "presets"
    presets.mkdir()
    for name, model in (("a_three_way", "scripted:one"), ("b_echo", "scripted:two"), ("c_two_way", "scripted:one")):
        agents = ["republican", "republican"] if name == "b_echo" else ["republican", "democrat"]
        (presets / f"{name}.yaml").write_text(yaml.safe_dump(
            {"model": model, "topics": ["racism"], "agents": agents, "rounds": 1, "repetitions": 2}))
    summaries = reproduce([], tmp_path / "out", preset_dir=presets)
    assert [s.complete for s in summaries] == [2, 2, 2]
    one, two = load_bank(tmp_path / "out" / "personas.jsonl"), load_bank(tmp_path / "out" / "personas-scripted-two.jsonl")
    assert {p.model for p in one} == {"scripted:one"} and {p.model for p in two} == {"scripted:two"}
    assert Counter(p.party for p in one) == {"republican": 2, "democrat": 2}
    assert Counter(p.party for p in two) == {"republican": 4}
    for name, bank in (("a_three_way", one), ("b_echo", two), ("c_two_way", one)):
        seated = set(debatelab.load(tmp_path / "out" / name).agents.persona_id.dropna())
        assert seated <= {p.id for p in bank}, name
    # a later call keeps each model's bank; a bank that belongs to another model is never reused
    again = reproduce(["b_echo"], tmp_path / "out", preset_dir=presets)
    assert again[0].complete == 2 and load_bank(tmp_path / "out" / "personas-scripted-two.jsonl") == two


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(DebatelabError, match="unknown preset 'fig99'"):
        reproduce(["fig99"], tmp_path, model="scripted", preset_dir=PRESETS)
    assert not (tmp_path / "personas.jsonl").exists()


def test_too_small_shared_bank_says_what_to_do(tmp_path):
    reproduce(["fig4_two_way"], tmp_path / "p", model="scripted", repetitions=2, preset_dir=PRESETS)
    with pytest.raises(DebatelabError, match="use a new --out, or delete personas.jsonl"):
        reproduce(["fig4_two_way"], tmp_path / "p", model="scripted", repetitions=5, preset_dir=PRESETS)
    # the echo chamber seats two Republicans per debate: 2 repetitions need 4, the bank has 2
    with pytest.raises(DebatelabError, match="has 2 republican personas but these presets need 4"):
        reproduce(["fig8_echo_republican"], tmp_path / "p", model="scripted", repetitions=2, preset_dir=PRESETS)


def test_a_busy_preset_folder_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    import fcntl
    import os

    busy = tmp_path / "paper" / "fig8_echo_republican"
    busy.mkdir(parents=True)
    fd = os.open(busy / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another writer (an open file description of its own)
    loads = []
    monkeypatch.setattr("debatelab.reproduce.load_llm", lambda *a, **k: loads.append(a))
    monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: loads.append(a))
    try:
        with pytest.raises(DebatelabError, match="in use by another debatelab process"):
            reproduce(["fig3_three_way", "fig8_echo_republican"], tmp_path / "paper", model="scripted",
                      repetitions=2, preset_dir=PRESETS)
    finally:
        os.close(fd)
    assert loads == [] and not (tmp_path / "paper" / "personas.jsonl").exists()
    assert not (tmp_path / "paper" / "fig3_three_way" / "run.sqlite").exists()


def _cpu_only_dir(tmp_path: Path) -> Path:
    """A scripted Figure 3 beside the real Figure 7 (Mistral, 8-bit on CUDA) preset."""
    folder = tmp_path / "presets"
    folder.mkdir()
    fig3 = yaml.safe_load((PRESETS / "fig3_three_way.yaml").read_text())
    (folder / "fig3_three_way.yaml").write_text(yaml.safe_dump({**fig3, "model": "scripted", "repetitions": 2,
                                                                "topics": ["racism"]}))
    (folder / "fig7_mistral_three_way.yaml").write_text((PRESETS / "fig7_mistral_three_way.yaml").read_text())
    return folder


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without a GPU")
def test_a_named_gpu_preset_fails_at_once_without_a_gpu(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr("debatelab.reproduce.load_llm", lambda *a, **k: loads.append(a))
    with pytest.raises(DebatelabError, match="fig7_mistral_three_way need a CUDA GPU"):
        reproduce(["fig3_three_way", "fig7_mistral_three_way"], tmp_path / "out", preset_dir=_cpu_only_dir(tmp_path))
    assert loads == [] and not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without a GPU")
def test_every_preset_leaves_out_the_gpu_ones_without_a_gpu(tmp_path, capsys):
    summaries = reproduce([], tmp_path / "out", preset_dir=_cpu_only_dir(tmp_path))
    assert [s.run_dir.name for s in summaries] == ["fig3_three_way"] and summaries[0].complete == 2
    assert "note: leaving out fig7_mistral_three_way (they need a CUDA GPU" in capsys.readouterr().err


def test_a_preset_named_twice_runs_once(tmp_path):
    summaries = reproduce(["fig3_three_way", "fig3_three_way"], tmp_path / "out", model="scripted",
                          repetitions=1, preset_dir=PRESETS)
    assert [s.run_dir.name for s in summaries] == ["fig3_three_way"]
