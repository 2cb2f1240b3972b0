"""Party adapters (``party: both``): both parties' SFT and DPO adapters from one question file,
the "after" debates seating each partisan on its own party's adapter (the Default on the base),
Table 1 per party, resume, the lab's look-up, the presets, and bad input in one line."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_model import build_tiny_model

from conftest import make_bank

from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.finetune import dpo as dpo_module
from debatelab.finetune import sft as sft_module
from debatelab.finetune.parties import adapter_dir, party_adapter_seats
from debatelab.finetune.questions import SEED_QUESTIONS, load_questions
from debatelab.finetune.study import load_study, run_study
from debatelab.personas import load_bank
from debatelab.types import DebateSpec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PARTIES = ("republican", "democrat")
ADAPTERS = [f"{kind}-r2-seed{seed}" for kind in ("sft", "dpo") for seed in (0, 1)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parties")
    model = build_tiny_model(root / "tiny")
    make_bank(root / "bank.jsonl", per_party=2)
    (root / "experiment.yaml").write_text(yaml.safe_dump({
        "model": "scripted", "topics": ["racism"], "agents": ["republican", "democrat", "default"],
        "rounds": 1, "repetitions": 2, "reply": {"max_tokens": 6}, "survey": {"method": "logprobs"}}))
    (root / "mmlu.jsonl").write_text("".join(json.dumps({
        "question": f"Question {i} about climate?", "choices": ["A1", "B2", "C3", "D4"], "answer": i % 4,
        "subject": "civics"}) + "\n" for i in range(4)))
    tiny = {"effective_batch": 4, "per_device_batch": 4, "max_length": 96, "learning_rate": 1e-3}
    (root / "study.yaml").write_text(yaml.safe_dump({
        "model": f"hf:{model}", "backend": {"threads": 1}, "party": "both", "personas": "bank.jsonl",
        "questions": {"target": 10}, "answers": {"k": 1, "max_tokens": 8}, "sft": tiny, "dpo": tiny,
        "ranks": {"sft": [2], "dpo": [2]}, "seeds": [0, 1], "experiment": "experiment.yaml",
        "benchmarks": {"mmlu": "mmlu.jsonl"}}))
    return root


@pytest.fixture(scope="module")
def study_out(root: Path) -> Path:
    run_study(load_study(root / "study.yaml"), root / "out")
    return root / "out"


def test_both_parties_answer_the_same_questions_and_train_their_own_adapters(study_out: Path):
    questions = load_questions(study_out / "questions.txt")  # generated once, for both parties
    assert questions == list(SEED_QUESTIONS)
    answers = {p: _rows(study_out / "answers" / f"{p}.jsonl") for p in PARTIES}
    for party, rows in answers.items():
        assert [r["question"] for r in rows] == questions and {r["party"] for r in rows} == {party}
    assert [r["question_id"] for r in answers["republican"]] == [r["question_id"] for r in answers["democrat"]]
    texts = {p: [r["completion"][0]["content"] for r in rows] for p, rows in answers.items()}
    assert sum(a != b for a, b in zip(texts["republican"], texts["democrat"])) >= len(questions) // 2
    for party, other in (PARTIES, PARTIES[::-1]):  # DPO: a party's own answers chosen, the other's rejected
        pairs = _rows(study_out / "answers" / f"dpo_pairs_{party}.jsonl")
        assert [p["chosen"][0]["content"] for p in pairs] == texts[party]
        assert [p["rejected"][0]["content"] for p in pairs] == texts[other]
    assert not (study_out / "answers" / "dpo_pairs.jsonl").exists() and not (study_out / "adapters" / "sft-r2-seed0").exists()
    for party in PARTIES:
        for name in ADAPTERS:
            manifest = json.loads((study_out / "adapters" / party / name / "manifest.json").read_text())
            assert manifest["seed"] == int(name[-1]) and manifest["lora"]["r"] == 2
            data = answers[party] if name.startswith("sft") else _rows(study_out / "answers" / f"dpo_pairs_{party}.jsonl")
            assert manifest["dataset"]["rows"] == len(data)
            assert manifest["dataset"]["path"].endswith(f"{party}.jsonl" if name.startswith("sft") else f"_{party}.jsonl")
            if name.startswith("dpo"):  # continues its own party's SFT adapter of the same seed
                assert manifest["parent"]["path"] == str((study_out / "adapters" / party / f"sft{name[3:]}").resolve())


def _seat_keys(run: Path) -> list[dict[str, str]]:
    with sqlite3.connect(run / "run.sqlite") as db:
        specs = [DebateSpec.model_validate_json(row[0]) for row in db.execute("SELECT spec_json FROM debates")]
    return [{a.role: a.model for a in spec.agents} for spec in specs]


def test_after_debates_seat_each_partisan_on_its_own_party_adapter(root: Path, study_out: Path):
    model = f"hf:{root / 'tiny'}"
    assert {k for keys in _seat_keys(study_out / "debates" / "base") for k in keys.values()} == {""}
    for name in ADAPTERS:
        seats = _seat_keys(study_out / "debates" / name)
        assert len(seats) == 2
        for keys in seats:  # this seed's pair: R on R's adapter, D on D's, the Default on the base model
            assert keys == {p: f"{model}+{(study_out / 'adapters' / p / name).resolve()}" for p in PARTIES} | \
                {"default": ""}
        assert (study_out / "debates" / name / "attitudes.csv").exists()
    assert sorted(p.name for p in (study_out / "debates").iterdir()) == sorted(["base", *ADAPTERS])
    base_agents = pd.read_csv(study_out / "debates" / "base" / "turns.csv")["agent"].unique()
    assert set(pd.read_csv(study_out / "debates" / "sft-r2-seed1" / "turns.csv")["agent"].unique()) == set(base_agents)
    for slug in ("sft_r2", "sft_dpo_r2"):
        assert (study_out / "figures" / f"before_after_{slug}.png").exists()


def _final_default(run: Path) -> float:
    frame = pd.read_csv(run / "attitudes.csv")
    frame = frame[frame["role"] == "default"]
    return float(frame[frame["iteration"] == frame["iteration"].max()]["expected_score"].mean())


def test_table1_has_a_row_per_party_with_its_own_benchmarks(study_out: Path):
    table = pd.read_csv(study_out / "table1.csv")
    assert list(table.columns[:5]) == ["model", "method", "party", "r", "seeds"]
    got = [(m, None if isinstance(p, float) else p) for m, p in zip(table["method"], table["party"])]
    assert got == [("base", None), ("SFT", "republican"), ("SFT", "democrat"),
                   ("SFT+DPO", "republican"), ("SFT+DPO", "democrat")]
    for row in table.to_dict("records")[1:]:
        kind = "sft" if row["method"] == "SFT" else "dpo"
        names = [f"{kind}-r2-seed{s}" for s in (0, 1)]
        mmlu = [json.loads((study_out / "benchmarks" / f"{row['party']}-{n}.json").read_text())["mmlu"]["acc"]
                for n in names]
        finals = [_final_default(study_out / "debates" / n) for n in names]  # shared by both parties' rows
        for column, values in (("mmlu_acc", mmlu), ("default_final_racism", finals)):
            assert row[f"{column}_mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert row[f"{column}_sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert table["default_final_racism_mean"][1] == table["default_final_racism_mean"][2]
    md = (study_out / "table1.md").read_text()
    assert "| model | method | party | r | seeds |" in md and "| SFT | democrat | 2 | 2 |" in md
    assert "Party rows:" in md and math.isnan(table["hellaswag_acc_norm_mean"][0])


def test_resume_skips_every_done_step_and_redoes_only_what_is_missing(root: Path, study_out: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    before = pd.read_csv(study_out / "table1.csv")
    missing = study_out / "adapters" / "democrat" / "dpo-r2-seed1" / "manifest.json"
    kept = missing.read_bytes()
    missing.unlink()  # as if the study stopped while this adapter trained
    stamps = {p: p.stat().st_mtime_ns for p in study_out.rglob("*") if p.is_file() and p != missing
              and not {"debates", "figures"} & set(p.parts) and p.suffix not in (".csv", ".md")}
    trained: list[Path] = []

    def no_sft(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"SFT trained again: {args}")

    def fake_dpo(base: str, parent: Path, pairs: Path, folder: Path, *args: object, **kwargs: object) -> Path:
        trained.append(folder)
        (folder / "manifest.json").write_bytes(kept)
        return folder

    monkeypatch.setattr(sft_module, "train_sft", no_sft)
    monkeypatch.setattr(dpo_module, "train_dpo", fake_dpo)
    run_study(load_study(root / "study.yaml"), study_out)
    assert trained == [missing.parent]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # questions, answers, pairs, adapters, scores
    pd.testing.assert_frame_equal(pd.read_csv(study_out / "table1.csv"), before)


def test_party_adapter_seats_finds_a_complete_pair(study_out: Path, tmp_path: Path):
    seats = party_adapter_seats(study_out, 2, 1)
    assert seats == {p: study_out / "adapters" / p / "sft-r2-seed1" for p in PARTIES}
    assert party_adapter_seats(study_out, 2, 0, method="dpo")["democrat"] == study_out / "adapters" / "democrat" / "dpo-r2-seed0"
    for folder, rank, seed, needle in ((study_out, 16, 0, "no complete republican SFT adapter at r=16, seed 0"),
                                       (study_out, 2, 7, "seed 7"), (tmp_path, 2, 0, str(tmp_path))):
        with pytest.raises(DebatelabError, match="run `debatelab study` with party: both") as info:
            party_adapter_seats(folder, rank, seed)
        assert needle in str(info.value) and "\n" not in str(info.value)
    half = tmp_path / "half"  # only the Republican adapter finished
    adapter_dir(half, "republican", "sft", 2, 0).mkdir(parents=True)
    (adapter_dir(half, "republican", "sft", 2, 0) / "manifest.json").write_text("{}")
    with pytest.raises(DebatelabError, match="no complete democrat SFT adapter"):
        party_adapter_seats(half, 2, 0)
    with pytest.raises(DebatelabError, match="method must be one of sft, dpo, not 'ppo'"):
        party_adapter_seats(study_out, 2, 0, method="ppo")  # type: ignore[arg-type]


@pytest.mark.parametrize(("agents", "message"), [
    (["republican", "republican", "default"], "has no democrat agent"),
    (["default", "default"], "has no republican or democrat agent"),
    (["republican", {"role": "democrat", "adapter": "tuned"}, "default"], "must not give an agent its own model"),
    (["republican", "democrat", {"role": "default", "model": "scripted:x"}], "must not give an agent its own model"),
])
def test_bad_two_party_study_is_one_line(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         agents: list, message: str):
    from debatelab.cli import main

    data = yaml.safe_load((root / "experiment.yaml").read_text())
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({**data, "agents": agents}))
    study = yaml.safe_load((root / "study.yaml").read_text())
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**study, "experiment": "e.yaml", "personas": str(root / "bank.jsonl"),
                                    "benchmarks": {}}))
    with pytest.raises(DebatelabError) as info:
        load_study(path)
    text = str(info.value)
    assert text.startswith(f"invalid study config {path}: experiment: party: both") and message in text
    assert "\n" not in text
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "out").exists()


def test_one_party_study_keeps_its_folders(root: Path, tmp_path: Path):
    """party: republican (the default) trains into adapters/sft-r2-seed0, as before party adapters."""
    study = load_study(root / "study.yaml").model_copy(update={"party": "republican"})
    assert study.parties() == ("republican",) and load_study(root / "study.yaml").parties() == PARTIES
    assert adapter_dir(tmp_path, None, "sft", 2, 0) == tmp_path / "adapters" / "sft-r2-seed0"


def test_presets_load_and_point_at_the_small_studys_adapters():
    study = load_study(EXPERIMENTS / "finetune" / "study_party_adapters_embedded_small.yaml")
    assert study.party == "both" and study.model == "embedded" and study.dpo is None
    assert (study.questions.target, study.answers.k, study.seeds, study.sft_ranks()) == (10, 2, [0], [16])
    assert study.benchmarks.mmlu is None and study.benchmarks.hellaswag is None  # nothing to prepare first
    bank = load_bank(study.personas)  # shipped, so the study generates none: both parties answer
    assert {p.party for p in bank} == set(PARTIES) and study.personas.parent == EXPERIMENTS / "finetune"
    preset = EXPERIMENTS / "mitigation" / "party_adapters.yaml"
    config = load_config(preset)  # validates before the study has run: the folders need not exist yet
    out = EXPERIMENTS.parent / "runs" / "party_adapters"  # the --out the preset's comment gives the study
    expected = {p: adapter_dir(out, p, "sft", study.sft_ranks()[0], study.seeds[0]).resolve() for p in PARTIES}
    seats = {a.role: a for a in config.agents if not isinstance(a, str)}
    assert {p: Path(seats[p].adapter).resolve() for p in PARTIES} == expected and "default" in config.roles
    assert [k for k, r in zip(config.seat_models(), config.roles) if r == "default"] == [""]
    assert all(k.startswith("embedded+") for k, r in zip(config.seat_models(), config.roles) if r != "default")
    experiment = load_config(study.experiment)  # the study's "after" debate, as an experiment of its own
    same = {"agents": config.roles, "name": experiment.name, "personas": experiment.personas}
    assert config.model_copy(update=same) == experiment
    assert config.personas.resolve() == experiment.personas.resolve() == study.personas
