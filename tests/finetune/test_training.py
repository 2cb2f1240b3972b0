"""SFT and DPO training on a tiny random Llama (no downloads): the adapter changes the model and
reloads, DPO widens the chosen-vs-rejected margin against the SFT reference, and fine-tuning on a
fixed rating pulls the survey's expected score towards it (the paper's controlled intervention)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from debatelab.errors import DebatelabError
from debatelab.finetune import devices
from debatelab.finetune.base import MANIFEST, file_sha256, resolve_base
from debatelab.finetune.devices import resolve_precision
from debatelab.finetune.dpo import DPOSettings, fit_dpo, train_dpo
from debatelab.finetune.sft import SFTSettings, fit_sft, train_sft
from debatelab.llm.base import Message, Prompt, ScoreRequest
from debatelab.llm.hf import HFLLM
from debatelab.llm.options import BackendOptions
from debatelab.survey import from_option_scores

SCALE = tuple(str(i) for i in range(11))
TARGET = 2  # the rating the SFT data always states

WORDINGS = [
    "On a scale from 0 to 10, how much do you agree that {t}?",
    "Rate from 0 to 10 how strongly you believe that {t}.",
    "Answer with a single number between 0 and 10: do you think that {t}?",
    "From 0 (not at all) to 10 (completely), do you agree that {t}?",
]
TOPICS = ["taxes should rise", "remote work is better", "carbon should be taxed", "social media should be regulated"]
# held out of training: unseen wordings and topics
SURVEY = [
    "How much do you agree, 0 to 10, that the debate moved opinions?",
    "Give one number from 0 to 10: should the government act on climate change now?",
    "On a scale of 0 to 10, is a good argument clear, honest and short?",
]

SFT_TEST = SFTSettings(r=8, effective_batch=8, per_device_batch=8, epochs=4, learning_rate=1e-2, device="cpu")
DPO_TEST = DPOSettings(effective_batch=8, per_device_batch=4, epochs=3, learning_rate=5e-3, device="cpu")


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # For a model this small torch's thread pool only adds contention on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def base(base_dir: Path) -> str:
    return f"hf:{base_dir}"


@pytest.fixture(scope="module")
def sft_data(workdir: Path) -> Path:
    """A survey question in many wordings, always answered with the same rating (plus an extra key
    the loader must drop)."""
    rows = [{"prompt": user(w.format(t=t)), "completion": assistant(str(TARGET)), "id": f"{i}-{j}"}
            for i, w in enumerate(WORDINGS) for j, t in enumerate(TOPICS)]
    return write_jsonl(workdir / "sft.jsonl", rows)


@pytest.fixture(scope="module")
def dpo_data(workdir: Path) -> Path:
    rows = [{"prompt": user(w.format(t=t)), "chosen": assistant("I would say 8."),
             "rejected": assistant("I would say 2."), "question_id": i}
            for i, w in enumerate(WORDINGS) for t in TOPICS[:2]]
    return write_jsonl(workdir / "dpo.jsonl", rows)


@pytest.fixture(scope="module")
def sft(base: str, sft_data: Path, workdir: Path):
    return fit_sft(base, sft_data, workdir / "sft_adapter", SFT_TEST)


@pytest.fixture(scope="module")
def dpo(base: str, sft, dpo_data: Path, workdir: Path):
    return fit_dpo(base, sft.path, dpo_data, workdir / "dpo_adapter", DPO_TEST)


def load_base_model(base_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


def load_adapter(base_dir: Path, adapter: Path) -> Any:
    return PeftModel.from_pretrained(load_base_model(base_dir), adapter).eval()


def prompt_logits(model: Any, tokenizer: Any, text: str) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(user(text), add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids["input_ids"]])).logits[0]


def completion_logprob(model: Any, tokenizer: Any, prompt: list[dict], completion: list[dict]) -> float:
    """Sum of the log-probabilities of the completion's tokens (as the chat template writes them)."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    assert full.startswith(head)
    head_ids = tokenizer(head, add_special_tokens=False).input_ids
    ids = tokenizer(full, add_special_tokens=False).input_ids
    assert ids[: len(head_ids)] == head_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(sum(logp[k - 1, ids[k]] for k in range(len(head_ids), len(ids))))


def margin(model: Any, tokenizer: Any, pairs: Path) -> float:
    """Mean (chosen - rejected) completion log-probability over the pairs file."""
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    diffs = [completion_logprob(model, tokenizer, r["prompt"], r["chosen"])
             - completion_logprob(model, tokenizer, r["prompt"], r["rejected"]) for r in rows]
    return sum(diffs) / len(diffs)


def expected_scores(model: Any, base_dir: Path) -> list[float]:
    """The survey's expected 0-10 score per held-out question, through the real HF backend."""
    llm = HFLLM(model, AutoTokenizer.from_pretrained(base_dir), {"backend": "hf"}, BackendOptions(device="cpu"))
    requests = [ScoreRequest(Prompt(messages=(Message("user", q),)), SCALE) for q in SURVEY]
    answers = [from_option_scores(0, 0, s) for s in llm.score_options(requests)]
    assert all(a.valid for a in answers)
    return [a.expected_score for a in answers]


# ---- cheap checks -------------------------------------------------------------------------
def test_resolve_base(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base(f"hf:{base_dir}") == str(base_dir.resolve())
    assert resolve_base("hf:HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    import debatelab.llm.embedded as embedded

    monkeypatch.setattr(embedded, "ensure_converted", lambda: Path("/cache/smollm2"))
    assert resolve_base("embedded") == "/cache/smollm2"
    for bad in ("openai:gpt-4o", "scripted", "hf:", "hf:./no/such/dir", "embedded:x", "llama"):
        with pytest.raises(DebatelabError):
            resolve_base(bad)


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 100_000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 100_000).hexdigest()


PAPER_TARGETS = {"q_proj", "v_proj", "k_proj", "o_proj", "up_proj", "down_proj", "gate_proj"}  # appendix A.2


def test_settings_default_to_the_paper() -> None:
    sft = SFTSettings()
    assert (sft.r, sft.lora_alpha, sft.dropout, sft.bias) == (256, 512, 0.05, "none")
    assert set(sft.target_modules) == PAPER_TARGETS and len(sft.target_modules) == 7
    assert (sft.effective_batch, sft.epochs, sft.quantization) == (32, 1, "auto")
    assert SFTSettings(r=64).lora_alpha == 128 and SFTSettings(r=16).lora_alpha == 32  # alpha follows r
    assert SFTSettings(r=8, alpha=8).lora_alpha == 8  # unless set
    dpo = DPOSettings()
    assert (dpo.beta, dpo.effective_batch, dpo.epochs, dpo.quantization) == (0.5, 32, 1, "auto")


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="multiple"):
        SFTSettings(effective_batch=32, per_device_batch=5)
    with pytest.raises(ValueError):
        SFTSettings(rank=4)  # extra keys are typos, not silently ignored
    with pytest.raises(ValueError):
        DPOSettings(effective_batch=6, per_device_batch=4)
    with pytest.raises(ValueError):
        SFTSettings(quantization="8bit")
    with pytest.raises(ValueError):
        SFTSettings(bias="some")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports a bf16-capable CUDA device (nothing is placed on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.mark.parametrize("bnb", [True, False])
def test_auto_is_qlora_on_cuda(fake_cuda: None, monkeypatch: pytest.MonkeyPatch, bnb: bool) -> None:
    monkeypatch.setattr(devices, "has_bitsandbytes", lambda: bnb)
    p = resolve_precision("auto", "auto")
    assert (p.device, p.dtype, p.bf16) == ("cuda", "bfloat16", True)
    if bnb:
        assert (p.quantization, p.method) == ("4bit", "QLoRA")
        assert p.reason == "auto: CUDA is available, so QLoRA on a 4-bit NF4 base (bitsandbytes), as in the paper"
    else:  # QLoRA is not possible: plain LoRA, and the reason says so
        assert (p.quantization, p.method) == ("none", "LoRA") and "bitsandbytes is not installed" in p.reason
        with pytest.raises(DebatelabError, match="needs bitsandbytes"):
            resolve_precision("auto", "4bit")
    assert resolve_precision("auto", "none").method == "LoRA"
    assert resolve_precision("auto", "auto", prefer="none").method == "LoRA"  # DPO continuing a LoRA adapter
    cpu = resolve_precision("cpu", "auto")
    assert (cpu.device, cpu.quantization) == ("cpu", "none") and cpu.reason.startswith("auto: device 'cpu' was requested")


def test_auto_is_plain_lora_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "has_bitsandbytes", lambda: True)
    p = resolve_precision("auto", "auto")
    assert (p.device, p.dtype, p.quantization, p.method) == ("cpu", "float32", "none", "LoRA")
    assert p.record() == {"method": "LoRA", "quantization": "none", "device": "cpu", "dtype": "float32",
                          "quantization_reason": "auto: torch sees no CUDA device and 4-bit QLoRA (bitsandbytes) "
                                                 "needs CUDA, so plain LoRA"}
    with pytest.raises(DebatelabError, match="needs CUDA"):
        resolve_precision("auto", "4bit")


def test_paper_defaults_reach_the_adapter_and_the_manifest(base: str, sft_data: Path, tmp_path: Path) -> None:
    """One optimizer step with every default (r 256, alpha 512, batch 32, ...): what PEFT and TRL
    actually used is in the saved adapter config and the manifest."""
    result = fit_sft(base, sft_data, tmp_path / "paper", SFTSettings(device="cpu"))
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"], config["bias"]) == (256, 512, 0.05, "none")
    assert set(config["target_modules"]) == PAPER_TARGETS and config["peft_type"] == "LORA"
    m = result.manifest
    assert m["lora"] == {"r": 256, "alpha": 512, "dropout": 0.05, "bias": "none",
                         "target_modules": sorted(PAPER_TARGETS), "task_type": "CAUSAL_LM"}
    assert m["trainer"]["effective_batch"] == 32 and m["trainer"]["num_train_epochs"] == 1
    assert m["trainer"]["per_device_train_batch_size"] * m["trainer"]["gradient_accumulation_steps"] == 32
    assert m["optimizer_steps"] == 1  # 16 rows, batch 32, one epoch
    assert (m["method"], m["quantization"]) == ("LoRA", "none") and "QLoRA" in m["quantization_reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_needs_cuda(base: str, sft_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DebatelabError, match="needs CUDA"):
        train_sft(base, sft_data, tmp_path / "out", SFTSettings(quantization="4bit"))
    with pytest.raises(DebatelabError, match="device 'cuda' requested"):
        train_sft(base, sft_data, tmp_path / "out", SFTSettings(device="cuda"))
    assert not (tmp_path / "out").exists()


def test_bad_dataset_rows(base: str, tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": user("q"), "completion": assistant("a")},
                                                {"prompt": "q", "completion": assistant("a")}])
    with pytest.raises(DebatelabError, match="line 2"):
        train_sft(base, bad, tmp_path / "out", SFT_TEST)
    with pytest.raises(DebatelabError, match="not found"):
        train_sft(base, tmp_path / "missing.jsonl", tmp_path / "out", SFT_TEST)


# ---- SFT ----------------------------------------------------------------------------------
def test_sft_changes_logits_and_adapter_reloads(sft, base: str, base_dir: Path, sft_data: Path) -> None:
    files = {p.name for p in sft.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", MANIFEST} <= files

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    question = SURVEY[0]
    before = prompt_logits(load_base_model(base_dir), tokenizer, question)
    trained = prompt_logits(sft.model, tokenizer, question)
    reloaded = prompt_logits(load_adapter(base_dir, sft.path), tokenizer, question)
    assert (trained - before).abs().max() > 0.1
    torch.testing.assert_close(reloaded, trained, rtol=1e-4, atol=1e-4)

    manifest = json.loads((sft.path / MANIFEST).read_text())
    assert manifest == sft.manifest
    assert manifest["kind"] == "sft" and manifest["base_model"] == base
    assert manifest["base_identity"]["source"] == str(base_dir.resolve()) and manifest["base_identity"]["weights"]
    assert manifest["dataset"] == {"path": str(sft_data.resolve()), "sha256": file_sha256(sft_data), "rows": 16}
    assert manifest["settings"] == SFT_TEST.model_dump(mode="json") and manifest["seed"] == 0
    assert manifest["lora"]["alpha"] == 16 and manifest["device"] == "cpu" and manifest["dtype"] == "float32"
    assert manifest["method"] == "LoRA" and manifest["quantization"] == "none"
    assert manifest["quantization_reason"].startswith("auto: device 'cpu' was requested")
    assert set(manifest["versions"]) >= {"trl", "peft", "transformers", "torch"}
    assert manifest["versions"]["trl"] and manifest["train_runtime_s"] > 0
    curve = manifest["loss_curve"]
    assert len(curve) == manifest["optimizer_steps"] == 8  # 16 rows / batch 8 x 4 epochs
    assert [c["step"] for c in curve] == list(range(1, 9))
    assert all(math.isfinite(c["loss"]) for c in curve)
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_sft_refuses_to_overwrite_a_complete_adapter(sft, base: str, sft_data: Path) -> None:
    with pytest.raises(DebatelabError, match="already holds"):
        train_sft(base, sft_data, sft.path, SFT_TEST)


def test_bias_injection_moves_the_survey_towards_the_trained_rating(sft, base_dir: Path) -> None:
    before = expected_scores(load_base_model(base_dir), base_dir)
    after = expected_scores(load_adapter(base_dir, sft.path), base_dir)
    for b, a in zip(before, after):
        assert abs(a - TARGET) < abs(b - TARGET)
    mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
    assert abs(mean_after - TARGET) < 1.0 < abs(mean_before - TARGET)


# ---- DPO ----------------------------------------------------------------------------------
def test_dpo_raises_the_chosen_vs_rejected_margin(dpo, sft, base_dir: Path, dpo_data: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    before = margin(load_adapter(base_dir, sft.path), tokenizer, dpo_data)
    after = margin(load_adapter(base_dir, dpo.path), tokenizer, dpo_data)
    assert after > before + 1.0
    assert after == pytest.approx(margin(dpo.model, tokenizer, dpo_data), abs=1e-3)  # the saved adapter is the trained one


def test_dpo_reference_is_the_sft_model(dpo, sft) -> None:
    # At step 1 the policy is the SFT model; were the reference anything else (e.g. the bare base
    # with adapters disabled) the implicit rewards would not all be zero and the loss not log 2.
    first = dpo.manifest["loss_curve"][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    # and the frozen reference adapter still holds exactly the SFT weights after training
    from safetensors.torch import load_file

    saved = load_file(str(sft.path / "adapter_model.safetensors"))
    ref = {n: p for n, p in dpo.model.named_parameters() if ".ref." in n}
    assert ref and len(ref) == len(saved)
    for name, value in saved.items():
        torch.testing.assert_close(ref[name.replace(".weight", ".ref.weight")], value)
    trained = {n: p for n, p in dpo.model.named_parameters() if ".default." in n}
    assert any(not torch.equal(trained[n.replace(".weight", ".default.weight")], v) for n, v in saved.items())


def test_dpo_manifest(dpo, sft, base: str, dpo_data: Path) -> None:
    assert not (dpo.path / "ref").exists()  # only the trained adapter is saved
    manifest = json.loads((dpo.path / MANIFEST).read_text())
    assert manifest["kind"] == "dpo" and manifest["reference"] == "sft" and manifest["base_model"] == base
    assert manifest["parent"]["path"] == str(sft.path.resolve())
    assert manifest["parent"]["manifest_sha256"] == file_sha256(sft.path / MANIFEST)
    assert manifest["dataset"]["sha256"] == file_sha256(dpo_data) and manifest["dataset"]["rows"] == 8
    assert manifest["settings"]["beta"] == 0.5 and manifest["loss_curve"]
    # what TRL ran with, read back from its config: the paper's fixed beta and the sigmoid DPO loss
    assert manifest["trainer"]["beta"] == 0.5 and manifest["trainer"]["loss_type"] in ("sigmoid", ["sigmoid"])
    assert manifest["lora"] == {**sft.manifest["lora"]} and manifest["method"] == "LoRA"
    assert manifest["quantization_reason"].startswith("auto: device 'cpu' was requested")


def test_dpo_needs_a_complete_sft_adapter_of_the_same_base(sft, base: str, dpo_data: Path, tmp_path: Path) -> None:
    incomplete = tmp_path / "incomplete"
    shutil.copytree(sft.path, incomplete)
    (incomplete / MANIFEST).unlink()
    with pytest.raises(DebatelabError, match="not a complete adapter"):
        train_dpo(base, incomplete, dpo_data, tmp_path / "out", DPO_TEST)

    other = tmp_path / "other_base"
    shutil.copytree(sft.path, other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["base_identity"]["weights"] = "0" * 16
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DebatelabError, match="base weights differ"):
        train_dpo(base, other, dpo_data, tmp_path / "out", DPO_TEST)
