"""The whole self-fine-tuning study end to end on a tiny local model, and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_model import build_tiny_model

from conftest import make_bank

from debatelab.errors import DebatelabError
from debatelab.finetune.study import load_study, run_study


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    model = build_tiny_model(root / "tiny")
    make_bank(root / "bank.jsonl", per_party=2)
    (root / "questions.txt").write_text("How big a problem is climate change today?\n"
                                        "What do you think about immigration policy today?\n")
    (root / "experiment.yaml").write_text(yaml.safe_dump({
        "model": "scripted", "topics": ["racism"], "agents": ["republican", "democrat", "default"],
        "rounds": 1, "repetitions": 2, "reply": {"max_tokens": 6}}))
    _write_jsonl(root / "mmlu.jsonl", [{"question": f"Question {i} about climate?", "choices": ["A1", "B2", "C3", "D4"],
                                        "answer": i % 4, "subject": "civics"} for i in range(4)])
    _write_jsonl(root / "hellaswag.jsonl", [{"ctx": f"The debate {i} went", "endings": ["well", "badly", "long", "short"],
                                             "label": i % 4} for i in range(4)])
    tiny = {"effective_batch": 2, "per_device_batch": 2, "max_length": 128, "learning_rate": 1e-3}
    (root / "study.yaml").write_text(yaml.safe_dump({
        "model": f"hf:{model}", "backend": {"threads": 1}, "party": "republican", "personas": "bank.jsonl",
        "questions": {"file": "questions.txt"}, "answers": {"k": 2, "max_tokens": 8},
        "sft": {**tiny, "r": 4}, "dpo": tiny, "seeds": [0, 1], "experiment": "experiment.yaml",
        "benchmarks": {"mmlu": "mmlu.jsonl", "hellaswag": "hellaswag.jsonl"}}))
    return root


def test_study_runs_end_to_end_and_resumes(study_dir: Path):
    study = load_study(study_dir / "study.yaml")
    out = study_dir / "out"
    table = pd.read_csv(run_study(study, out))
    assert list(table["method"]) == ["base", "SFT", "SFT+DPO"]
    assert table.loc[1:, "r"].tolist() == [4, 4] and table.loc[1:, "seeds"].tolist() == [2, 2]
    assert table["mmlu"].between(0, 1).all() and table["hellaswag"].between(0, 1).all()
    assert table["default_final_racism"].between(0, 10).all()
    rows = [json.loads(line) for line in (out / "answers" / "republican.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 and all(r["party"] == "republican" for r in rows)
    for name in ("sft-seed0", "sft-seed1", "dpo-seed0", "dpo-seed1"):
        assert (out / "adapters" / name / "manifest.json").exists()
        assert (out / "debates" / name / "attitudes.csv").exists()
    assert (out / "figures" / "before_after_sft.png").exists() and (out / "figures" / "before_after_sft_dpo.svg").exists()
    # the tuned runs seat the same personas as the base run (the paper's "original agent contexts")
    base_agents = pd.read_csv(out / "debates" / "base" / "turns.csv")["agent"].unique()
    tuned_agents = pd.read_csv(out / "debates" / "sft-seed0" / "turns.csv")["agent"].unique()
    assert set(base_agents) == set(tuned_agents)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")}
    run_study(study, out)  # resume: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")} == stamps


def test_bad_study_config_is_one_line(study_dir: Path, tmp_path: Path):
    data = yaml.safe_load((study_dir / "study.yaml").read_text())
    for change, needle in (({"sft": {"r": 0}}, "r"), ({"colour": 1}, "colour"), ({"experiment": "nope.yaml"}, "not found")):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**data, **change, "personas": str(study_dir / "bank.jsonl")}))
        with pytest.raises(DebatelabError, match=needle) as info:
            load_study(path)
        assert "\n" not in str(info.value)
