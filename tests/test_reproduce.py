"""Paper presets: every one runs end to end (scripted backend, reduced size) into one folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import debatelab
from debatelab.errors import DebatelabError
from debatelab.personas import load_bank
from debatelab.reproduce import reproduce, resolve_presets

PRESETS = Path(__file__).resolve().parents[1] / "experiments" / "paper"
EXPECTED = {"fig3_three_way", "fig4_two_way", "fig5_echo_republican_default", "fig8_echo_republican",
            "fig9_echo_democrat_default", "fig9b_echo_democrat"}


def test_every_paper_preset_exists_at_paper_size():
    paths = resolve_presets([], PRESETS)
    assert {p.stem for p in paths} == EXPECTED
    for path in paths:
        config = debatelab.load_config(path)
        assert config.repetitions == 40 and len(config.topics) == 4
        assert config.reply.temperature == 1.0 and config.model == "embedded"


def test_reproduce_all_presets_reduced_with_shared_bank(tmp_path):
    summaries = reproduce([], tmp_path / "paper", model="scripted", repetitions=2, preset_dir=PRESETS)
    assert {s.run_dir.name for s in summaries} == EXPECTED
    assert all(s.complete == s.debates == 4 * 2 for s in summaries)
    bank = load_bank(tmp_path / "paper" / "personas.jsonl")
    assert sorted({p.party for p in bank}) == ["democrat", "republican"] and len(bank) == 2 * 3
    echo = debatelab.load(tmp_path / "paper" / "fig8_echo_republican")
    assert set(echo.surveys.role) == {"republican"} and echo.surveys.iteration.max() == 8
    used = set(echo.agents.persona_id) | set(debatelab.load(tmp_path / "paper" / "fig3_three_way").agents.persona_id.dropna())
    assert used <= {p.id for p in bank}  # every run seats agents from the one shared bank


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(DebatelabError, match="unknown preset 'fig99'"):
        reproduce(["fig99"], tmp_path, model="scripted", preset_dir=PRESETS)
    assert not (tmp_path / "personas.jsonl").exists()


def test_too_small_shared_bank_says_what_to_do(tmp_path):
    reproduce(["fig4_two_way"], tmp_path / "p", model="scripted", repetitions=2, preset_dir=PRESETS)
    with pytest.raises(DebatelabError, match="use a new --out, or delete personas.jsonl"):
        reproduce(["fig4_two_way"], tmp_path / "p", model="scripted", repetitions=5, preset_dir=PRESETS)
