"""The whole self-fine-tuning study end to end on a tiny local model (an r sweep over two seeds),
its resume, Table 1's exact values, and the study configs: the shipped ones load, bad ones fail
in one line."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_model import build_tiny_model

from conftest import make_bank

from pydantic import ValidationError

from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.finetune import study as study_module
from debatelab.finetune.dpo import DPOSettings
from debatelab.finetune.questions import SEED_QUESTIONS
from debatelab.finetune.sft import SFTSettings
from debatelab.finetune.study import Variant, debate_config, load_study, run_study
from debatelab.finetune.table1 import TableRow, markdown, table_rows
from debatelab.store import lock_run_dir

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "finetune"


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
        "rounds": 1, "repetitions": 2, "reply": {"max_tokens": 6}, "survey": {"method": "logprobs"}}))
    _write_jsonl(root / "mmlu.jsonl", [{"question": f"Question {i} about climate?", "choices": ["A1", "B2", "C3", "D4"],
                                        "answer": i % 4, "subject": "civics"} for i in range(4)])
    _write_jsonl(root / "hellaswag.jsonl", [{"ctx": f"The debate {i} went", "endings": ["well", "badly", "long", "short"],
                                             "label": i % 4} for i in range(4)])
    tiny = {"effective_batch": 2, "per_device_batch": 2, "max_length": 128, "learning_rate": 1e-3}
    (root / "study.yaml").write_text(yaml.safe_dump({
        "model": f"hf:{model}", "backend": {"threads": 1}, "party": "republican", "personas": "bank.jsonl",
        "questions": {"file": "questions.txt"}, "answers": {"k": 2, "max_tokens": 8},
        "sft": tiny, "dpo": tiny, "ranks": {"sft": [4], "dpo": [2]}, "seeds": [0, 1],
        "experiment": "experiment.yaml", "benchmarks": {"mmlu": "mmlu.jsonl", "hellaswag": "hellaswag.jsonl"}}))
    return root


def _final_default_attitude(run: Path, topic: str) -> float:
    """Independently of the study code: from the run's exported attitudes.csv."""
    frame = pd.read_csv(run / "attitudes.csv")
    frame = frame[(frame["role"] == "default") & (frame["topic"] == topic)]
    return float(frame[frame["iteration"] == frame["iteration"].max()]["expected_score"].mean())


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return sum(values) / len(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_study_sweeps_ranks_end_to_end_and_resumes(study_dir: Path):
    study = load_study(study_dir / "study.yaml")
    out = study_dir / "out"
    table = pd.read_csv(run_study(study, out))
    members = {("base", None): ["base"], ("SFT", 2): ["sft-r2-seed0", "sft-r2-seed1"],
               ("SFT", 4): ["sft-r4-seed0", "sft-r4-seed1"], ("SFT+DPO", 2): ["dpo-r2-seed0", "dpo-r2-seed1"]}
    # every row: the base, the swept SFT rank, the SFT parent of the DPO rank, DPO; r ascending
    assert [(m, None if math.isnan(r) else int(r)) for m, r in zip(table["method"], table["r"])] == list(members)
    assert table["seeds"].tolist() == [1, 2, 2, 2]
    scores = {n: json.loads((out / "benchmarks" / f"{n}.json").read_text()) for names in members.values() for n in names}
    for (_, names), row in zip(members.items(), table.to_dict("records")):
        for column, values in (("hellaswag_acc_norm", [scores[n]["hellaswag"]["acc_norm"] for n in names]),
                               ("mmlu_acc", [scores[n]["mmlu"]["acc"] for n in names]),
                               ("default_final_racism",
                                [_final_default_attitude(out / "debates" / n, "racism") for n in names])):
            mean, sd = _mean_sd(values)
            assert _same(row[f"{column}_mean"], mean) and _same(row[f"{column}_sd"], sd), (column, names)
    md = (out / "table1.md").read_text()
    assert "| HellaSwag acc_norm (%) | MMLU acc (%) |" in md
    sft4 = table.iloc[2]
    cell = f"{sft4['mmlu_acc_mean'] * 100:.1f} ± {sft4['mmlu_acc_sd'] * 100:.1f}"
    assert re.search(rf"\| SFT \| 4 \| 2 \| [^|]+ \| {re.escape(cell)} \|", md)

    for name in ("sft-r2-seed0", "sft-r2-seed1", "sft-r4-seed0", "sft-r4-seed1", "dpo-r2-seed0", "dpo-r2-seed1"):
        manifest = json.loads((out / "adapters" / name / "manifest.json").read_text())
        assert manifest["lora"]["r"] == int(name[5]) and manifest["lora"]["alpha"] == 2 * int(name[5])
        assert manifest["seed"] == int(name[-1]) and manifest["method"] == "LoRA"
        assert (out / "debates" / name / "attitudes.csv").exists()
    assert json.loads((out / "adapters" / "dpo-r2-seed1" / "manifest.json").read_text())["parent"]["path"] == \
        str((out / "adapters" / "sft-r2-seed1").resolve())
    rows = [json.loads(line) for line in (out / "answers" / "republican.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 and all(r["party"] == "republican" for r in rows)
    for slug in ("sft_r2", "sft_r4", "sft_dpo_r2"):
        assert (out / "figures" / f"before_after_{slug}.png").exists()
    # the tuned runs seat the same personas as the base run (the paper's "original agent contexts")
    base_agents = pd.read_csv(out / "debates" / "base" / "turns.csv")["agent"].unique()
    tuned_agents = pd.read_csv(out / "debates" / "sft-r4-seed0" / "turns.csv")["agent"].unique()
    assert set(base_agents) == set(tuned_agents)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")}
    run_study(study, out)  # resume: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")} == stamps


def test_table_rows_from_known_inputs():
    """HellaSwag is acc_norm and MMLU acc (the other metric is a distractor), mean and sample sd
    over seeds, sd empty for one model, attitudes missing for a benchmark-only row."""
    scores = {
        "base": {"hellaswag": {"acc": 0.9, "acc_norm": 0.8}, "mmlu": {"acc": 0.6}},
        "a": {"hellaswag": {"acc": 0.9, "acc_norm": 0.5}, "mmlu": {"acc": 0.25, "acc_norm": 0.99}},
        "b": {"hellaswag": {"acc": 0.1, "acc_norm": 0.7}, "mmlu": {"acc": 0.5, "acc_norm": 0.01}},
        "c": {"hellaswag": {"acc": 0.1, "acc_norm": 0.4}, "mmlu": {"acc": 0.75}},
        "llama": {"hellaswag": {"acc": 0.7, "acc_norm": 0.772}, "mmlu": {"acc": 0.453}},
    }
    attitudes = {"base": 8.4, "a": 3.0, "b": 5.0, "c": 1.0}
    rows = [TableRow("m", "SFT+DPO", 8, ("c",)), TableRow("m", "SFT", 16, ("a", "b")), TableRow("m", "base", None, ("base",)),
            TableRow("llama2", "reference", None, ("llama",))]
    got = table_rows(rows, scores, attitudes, "racism")
    assert [(r["method"], r["r"], r["seeds"]) for r in got] == [("base", None, 1), ("SFT", 16, 2), ("SFT+DPO", 8, 1),
                                                               ("reference", None, 1)]
    base, sft, dpo, ref = got
    assert sft["hellaswag_acc_norm_mean"] == pytest.approx(0.6, abs=1e-15)
    assert sft["hellaswag_acc_norm_sd"] == pytest.approx(math.sqrt(0.02), abs=1e-15)
    assert sft["mmlu_acc_mean"] == 0.375 and sft["mmlu_acc_sd"] == pytest.approx(math.sqrt(0.03125), abs=1e-15)
    assert sft["default_final_racism_mean"] == 4.0 and sft["default_final_racism_sd"] == pytest.approx(math.sqrt(2))
    assert (base["hellaswag_acc_norm_mean"], base["mmlu_acc_mean"], base["default_final_racism_mean"]) == (0.8, 0.6, 8.4)
    assert math.isnan(base["mmlu_acc_sd"]) and math.isnan(dpo["default_final_racism_sd"])
    assert (ref["model"], ref["hellaswag_acc_norm_mean"]) == ("llama2", 0.772)
    assert math.isnan(ref["default_final_racism_mean"])
    md = markdown(got, "racism").splitlines()
    assert md[0] == ("| model | method | r | seeds | HellaSwag acc_norm (%) | MMLU acc (%) "
                     "| Default final attitude, racism (0-10) |")
    assert md[3] == "| m | SFT | 16 | 2 | 60.0 ± 14.1 | 37.5 ± 17.7 | 4.00 ± 1.41 |"
    assert md[2] == "| m | base | – | 1 | 80.0 | 60.0 | 8.40 |" and md[5].endswith("| 77.2 | 45.3 | – |")


# ---- configs --------------------------------------------------------------------------------
def test_paper_study_config_loads_at_paper_size(tmp_path: Path):
    study = load_study(EXPERIMENTS / "study_paper.yaml")  # loads, never runs
    assert study.model == "hf:mistralai/Mistral-7B-Instruct-v0.2" and study.party == "republican"
    assert study.questions.target == 100 and study.questions.file is None
    assert study.questions.target - len(SEED_QUESTIONS) == 90  # the ten of Table 2 + 90 generated
    assert (study.answers.k, study.answers.temperature) == (20, 1.0)
    assert study.seeds == [0, 1, 2]
    assert study.ranks.sft == [16, 64, 128, 256] and study.dpo_ranks() == [8]
    assert study.sft_ranks() == [16, 64, 128, 256, 8]  # the DPO adapter continues an r=8 SFT adapter
    sft = study.sft
    assert [sft.model_copy(update={"r": r}).lora_alpha for r in study.sft_ranks()] == [32, 128, 256, 512, 16]
    assert (sft.dropout, sft.bias, sft.effective_batch, sft.epochs, sft.quantization) == (0.05, "none", 32, 1, "auto")
    assert set(sft.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert study.dpo is not None and (study.dpo.beta, study.dpo.epochs, study.dpo.effective_batch) == (0.5, 1, 32)
    assert study.table_topic == "racism"
    assert study.benchmarks.mmlu is not None and study.benchmarks.hellaswag is not None
    experiment = load_config(study.experiment, model=study.model)
    assert study.experiment.name == "fig3_three_way.yaml" and "racism" in [t.id for t in experiment.resolved_topics()]
    assert experiment.agents == ["republican", "democrat", "default"] and experiment.model == study.model
    # Mistral in 8-bit on CUDA, as in the paper (§4.2) and the Figure 7 preset, before and after tuning
    fig7 = load_config(EXPERIMENTS.parent / "paper" / "fig7_mistral_three_way.yaml")
    assert (fig7.backend.device, fig7.backend.quantization) == ("cuda", "8bit")
    assert fig7.model == study.model and study.backend == fig7.backend
    before, after = debate_config(study, tmp_path / "personas.jsonl"), debate_config(study, tmp_path / "bank.jsonl", tmp_path)
    assert before.backend == fig7.backend and after.backend.adapter == str(tmp_path.resolve())
    assert after.backend.model_copy(update={"adapter": None}) == fig7.backend


def test_small_study_config_loads():
    study = load_study(EXPERIMENTS / "study_embedded_small.yaml")
    assert study.model == "embedded" and study.seeds == [0]
    assert study.sft_ranks() == [16] and study.dpo_ranks() == [16]  # DPO continues the one SFT adapter
    assert study.questions.target == 12 and study.answers.k == 4 and study.dpo is not None


BAD_FIELDS = [
    ({"colour": 1}, "colour: unknown field"),
    ({"questions": 5}, "questions: Input should be a valid dictionary"),
    ({"questions": {"target": 5}}, "questions.target: Input should be greater than or equal to 10"),
    ({"answers": {"k": "many"}}, "answers.k: Input should be a valid integer"),
    ({"sft": {"r": 16}}, "sft.r: the study sweeps ranks; list them in ranks.sft"),
    ({"sft": {"seed": 3}}, "sft.seed: fine-tuning seeds come from seeds"),
    ({"sft": {"learning_rate": 0}}, "sft.learning_rate: Input should be greater than 0"),
    ({"sft": {"effective_batch": 30, "per_device_batch": 8}}, "sft: effective_batch (30) must be a multiple"),
    ({"sft": {"quantization": "8bit"}}, "sft.quantization: Input should be 'auto', 'none' or '4bit'"),
    ({"dpo": {"beta": -1}}, "dpo.beta: Input should be greater than 0"),
    ({"dpo": "yes"}, "dpo: Input should be a valid dictionary"),
    ({"ranks": {"sft": [16, 0]}}, "ranks.sft.1: Input should be greater than or equal to 1"),
    ({"ranks": {"sft": [16, 16]}}, "ranks.sft: values must not repeat (16 given twice)"),
    ({"ranks": {"sft": []}}, "ranks.sft: List should have at least 1 item"),
    ({"seeds": [0, 0]}, "seeds: values must not repeat (0 given twice)"),
    ({"seeds": "0,1"}, "seeds: Input should be a valid list"),
    ({"model": "scripted"}, "model: 'scripted' has no local weights to tune"),
    ({"party": "green"}, "party: Input should be 'republican', 'democrat' or 'both'"),
    ({"benchmarks": {"limit": 0}}, "benchmarks.limit: Input should be greater than or equal to 1"),
    ({"benchmarks": {"compare": ["hf:x", "hf:x"]}}, "benchmarks.compare: values must not repeat"),
    ({"experiment": "nope.yaml"}, "experiment: config file not found"),
    ({"experiment": None}, "experiment: Input is not a valid path"),
    ({"table_topic": "taxes"}, "table_topic: 'taxes' is not a topic of the experiment (racism)"),
    ({"colour": 1, "seeds": []}, "(and 1 more problem)"),
    # non-finite floats (YAML .inf / .nan), refused in the study's own fields and in sft / dpo
    ({"answers": {"temperature": math.inf}}, "answers.temperature: Input should be a finite number"),
    ({"answers": {"temperature": math.nan}}, "answers.temperature: Input should be a finite number"),
    ({"sft": {"epochs": math.inf}}, "sft.epochs: Input should be a finite number"),
    ({"sft": {"learning_rate": math.inf}}, "sft.learning_rate: Input should be a finite number"),
    ({"dpo": {"beta": math.inf}}, "dpo.beta: Input should be a finite number"),
    ({"dpo": {"learning_rate": math.nan}}, "dpo.learning_rate: Input should be a finite number"),
    ({"sft": {"dropout": math.nan}}, "sft.dropout: Input should be a finite number"),
    # temperatures: 0, or between 1e-3 and 100 (a tiny one overflows the logits to inf)
    ({"answers": {"temperature": 1e-300}}, "answers.temperature: a temperature must be 0 (greedy) or between 0.001"),
    ({"answers": {"temperature": 101}}, "answers.temperature: a temperature must be 0 (greedy) or between 0.001 and 100, not 101"),
    ({"answers": {"temperature": -1}}, "answers.temperature: Input should be greater than or equal to 0"),
    # upper bounds on every size
    ({"questions": {"target": 10_001}}, "questions.target: Input should be less than or equal to 10000"),
    ({"questions": {"target": 10, "max_tokens": 8_193}}, "questions.max_tokens: Input should be less than or equal to 8192"),
    ({"answers": {"k": 1_001}}, "answers.k: Input should be less than or equal to 1000"),
    ({"answers": {"max_tokens": 8_193}}, "answers.max_tokens: Input should be less than or equal to 8192"),
    ({"ranks": {"sft": [16, 1_025]}}, "ranks.sft.1: Input should be less than or equal to 1024"),
    ({"ranks": {"dpo": [2_048]}}, "ranks.dpo.0: Input should be less than or equal to 1024"),
    ({"ranks": {"sft": list(range(1, 18))}}, "ranks.sft: List should have at most 16 items"),
    ({"ranks": {"dpo": list(range(1, 18))}}, "ranks.dpo: List should have at most 16 items"),
    ({"benchmarks": {"batch_size": 4_097}}, "benchmarks.batch_size: Input should be less than or equal to 4096"),
    ({"benchmarks": {"limit": 10**8}}, "benchmarks.limit: Input should be less than or equal to 10000000"),
    ({"benchmarks": {"compare": [f"hf:m{i}" for i in range(17)]}}, "benchmarks.compare: List should have at most 16"),
    ({"sft": {"max_length": 131_073}}, "sft.max_length: Input should be less than or equal to 131072"),
    ({"sft": {"effective_batch": 8_192}}, "sft.effective_batch: Input should be less than or equal to 4096"),
    ({"dpo": {"per_device_batch": 8_192}}, "dpo.per_device_batch: Input should be less than or equal to 4096"),
    ({"sft": {"epochs": 101}}, "sft.epochs: Input should be less than or equal to 100"),
    ({"sft": {"learning_rate": 2}}, "sft.learning_rate: Input should be less than or equal to 1"),
    ({"dpo": {"learning_rate": 1.5}}, "dpo.learning_rate: Input should be less than or equal to 1"),
    ({"dpo": {"beta": 1_000}}, "dpo.beta: Input should be less than or equal to 100"),
    ({"sft": {"alpha": 10**6}}, "sft.alpha: Input should be less than or equal to 65536"),
    ({"sft": {"logging_steps": 10**7}}, "sft.logging_steps: Input should be less than or equal to 1000000"),
    ({"repetitions": 10_001}, "repetitions: Input should be less than or equal to 10000"),
    # seeds: 1..16 of them, each in [0, 2**32) (numpy / transformers' set_seed refuse others)
    ({"seeds": [-1]}, "seeds.0: Input should be greater than or equal to 0"),
    ({"seeds": [0, 2**32]}, "seeds.1: Input should be less than 4294967296"),
    ({"seeds": list(range(17))}, "seeds: List should have at most 16 items"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"seed": 2**32}, "seed: Input should be less than 4294967296"),
    # paths: one line, not a traceback
    ({"personas": "bank\x00.jsonl"}, "personas: a path must not contain a NUL byte"),
    ({"benchmarks": {"mmlu": ""}}, "benchmarks.mmlu: a path must not be empty"),
]


@pytest.mark.parametrize(("change", "message"), BAD_FIELDS, ids=[m.split(":")[0] for _, m in BAD_FIELDS])
def test_bad_study_field_is_one_line(study_dir: Path, tmp_path: Path, change: dict, message: str):
    data = yaml.safe_load((study_dir / "study.yaml").read_text())
    data.update(change, personas=change.get("personas", str(study_dir / "bank.jsonl")), experiment=change.get(
        "experiment", str(study_dir / "experiment.yaml")), questions=change.get("questions", {"target": 10}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DebatelabError) as info:
        load_study(path)
    text = str(info.value)
    assert text.startswith(f"invalid study config {path}: ") and "\n" not in text
    assert message in text


def test_bad_study_yaml_is_one_line(tmp_path: Path):
    path = tmp_path / "s.yaml"
    for text, message in (("model: [unclosed", "is not valid YAML"), ("- a list", "must be a YAML mapping")):
        path.write_text(text)
        with pytest.raises(DebatelabError, match=message) as info:
            load_study(path)
        assert "\n" not in str(info.value)


def test_experiment_without_a_default_agent_is_refused(study_dir: Path, tmp_path: Path):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"model": "scripted", "topics": ["racism"],
                                                     "agents": ["republican", "democrat"]}))
    data = yaml.safe_load((study_dir / "study.yaml").read_text())
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**data, "experiment": "e.yaml", "questions": {"target": 10},
                                                     "personas": str(study_dir / "bank.jsonl")}))
    with pytest.raises(DebatelabError, match="experiment: it has no default agent"):
        load_study(tmp_path / "s.yaml")


def test_bad_benchmark_file_fails_before_any_step(study_dir: Path, tmp_path: Path):
    data = yaml.safe_load((study_dir / "study.yaml").read_text())
    data.update(personas=str(study_dir / "bank.jsonl"), experiment=str(study_dir / "experiment.yaml"),
                questions={"file": str(study_dir / "questions.txt")},
                benchmarks={"mmlu": str(tmp_path / "missing.jsonl"), "hellaswag": str(study_dir / "hellaswag.jsonl")})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    study = load_study(tmp_path / "s.yaml")  # a file may appear before the run: checked when it starts
    with pytest.raises(DebatelabError, match="^benchmarks.mmlu: mmlu file not found") as info:
        run_study(study, tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("settings", "change"), [
    (SFTSettings, {"seed": -1}), (SFTSettings, {"seed": 2**32}), (DPOSettings, {"seed": 2**32}),
    (SFTSettings, {"learning_rate": math.inf}), (DPOSettings, {"learning_rate": math.inf}),
    (SFTSettings, {"epochs": math.inf}), (DPOSettings, {"epochs": math.nan}), (DPOSettings, {"beta": math.inf}),
    (SFTSettings, {"r": 1_025}), (SFTSettings, {"max_length": 131_073}), (DPOSettings, {"effective_batch": 8_192}),
    (SFTSettings, {"target_modules": ("q_proj",) * 65}),
])
def test_train_settings_refuse_out_of_range_values(settings: type, change: dict):
    """Outside the study too (``fit_sft`` / ``fit_dpo``): finite floats, seeds that set_seed takes."""
    with pytest.raises(ValidationError):
        settings(**change)
    assert settings(seed=2**32 - 1, learning_rate=1, epochs=100).seed == 2**32 - 1


def test_second_study_on_a_held_folder_is_refused_before_any_model_load(study_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture):
    import debatelab.llm.registry as registry
    from debatelab.cli import main

    class Loaded(Exception):
        pass

    loads: list[tuple] = []

    def loader(*args: object, **kwargs: object) -> None:
        loads.append(args)
        raise Loaded

    monkeypatch.setattr(registry, "load_llm", loader)
    out = tmp_path / "out"
    held = lock_run_dir(out)  # another study (or run) holds the folder
    try:
        code = main(["study", str(study_dir / "study.yaml"), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code != 0 and err.count("\n") == 1 and "in use by another debatelab process" in err, err
        with pytest.raises(DebatelabError, match=f"^run directory {re.escape(str(out))} is in use by another"):
            run_study(load_study(study_dir / "study.yaml"), out)
    finally:
        held.release()
    assert loads == [] and sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing loaded, nothing written
    with pytest.raises(Loaded):  # free again: the study starts, and holds the lock while it runs ...
        run_study(load_study(study_dir / "study.yaml"), out)
    assert len(loads) == 1
    lock_run_dir(out).release()  # ... and releases it when it stops


def test_study_loads_its_generation_model_once(study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Personas, questions and answers share one load of the base model."""
    import debatelab.llm.registry as registry

    class Done(Exception):
        pass

    loads: list[tuple] = []
    monkeypatch.setattr(registry, "load_llm", lambda *args, **kwargs: loads.append(args) or object())

    def steps(result: object):
        return lambda study, out, base_llm, *rest: (base_llm(), base_llm(), result)[-1]

    def answers(*args: object) -> None:
        steps(None)(*args)
        raise Done

    monkeypatch.setattr(study_module, "_bank", steps(study_dir / "bank.jsonl"))
    monkeypatch.setattr(study_module, "_questions", steps(["Why?"]))
    monkeypatch.setattr(study_module, "_answers", answers)
    with pytest.raises(Done):
        run_study(load_study(study_dir / "study.yaml"), tmp_path / "out")
    assert len(loads) == 1


def test_debates_before_and_after_share_the_study_backend(study_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Every debate run, base and adapters alike, gets the study's backend over the experiment's own,
    and loads its model itself (after locking its folder)."""
    import debatelab.experiment as experiment

    data = yaml.safe_load((study_dir / "experiment.yaml").read_text())
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({**data, "backend": {"batch_size": 4, "dtype": "float32"}}))
    study_data = yaml.safe_load((study_dir / "study.yaml").read_text())
    study_data.update(experiment=str(tmp_path / "e.yaml"), personas=str(study_dir / "bank.jsonl"),
                      questions={"file": str(study_dir / "questions.txt")},
                      backend={"threads": 1, "dtype": "bfloat16", "prefix_cache_mb": 0})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study_data))
    study = load_study(tmp_path / "s.yaml")
    adapters = (tmp_path / "sft-r4-seed0", tmp_path / "sft-r4-seed1")
    for folder in adapters:
        folder.mkdir()
    calls: dict[str, tuple] = {}
    monkeypatch.setattr(experiment, "run_experiment",
                        lambda config, run_dir, **kwargs: calls.__setitem__(run_dir.name, (config, kwargs)))
    runs = study_module._debates(study, tmp_path / "out", study_dir / "bank.jsonl",
                                 [Variant("SFT", 4, adapters)], False)
    assert list(runs) == list(calls) == ["base", "sft-r4-seed0", "sft-r4-seed1"]
    base = calls["base"][0].backend
    assert (base.dtype, base.batch_size, base.threads, base.prefix_cache_mb, base.adapter) == ("bfloat16", 4, 1, 0, None)
    for folder in adapters:
        config, kwargs = calls[folder.name]
        assert config.backend.adapter == str(folder.resolve())
        assert config.backend.model_copy(update={"adapter": None}) == base
        assert "llm" not in kwargs and config.personas == calls["base"][0].personas
    assert "llm" not in calls["base"][1]
