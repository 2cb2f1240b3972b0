"""Base model + LoRA adapter through the hf backend (tuned-model debates)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_model import build_tiny_model
from transformers import AutoModelForCausalLM

from debatelab.errors import DebatelabError, EXIT_BAD_INPUT
from debatelab.llm import load_llm
from debatelab.llm.base import Message, Prompt, ScoreRequest
from debatelab.llm.options import BackendOptions

SCALE = tuple(str(i) for i in range(11))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapter")
    base = build_tiny_model(root / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # a freshly initialised LoRA is a no-op (B = 0); make it change the model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(root / "adapter")
    return base, root / "adapter"


def _scores(llm) -> tuple[float, ...]:
    prompt = Prompt(messages=(Message("user", "debate climate"),), assistant_prefix="")
    return llm.score_options([ScoreRequest(prompt, SCALE)])[0].logprobs


def test_adapter_changes_outputs_and_identity(dirs):
    base, adapter = dirs
    plain = load_llm(f"hf:{base}", BackendOptions(device="cpu", threads=1))
    tuned = load_llm(f"hf:{base}", BackendOptions(device="cpu", threads=1, adapter=str(adapter)))
    assert _scores(plain) != pytest.approx(_scores(tuned), abs=1e-4)
    assert "adapter" not in plain.identity()
    assert tuned.identity()["adapter"]["path"] == str(adapter.resolve()) and tuned.identity()["adapter"]["weights"]


def test_not_an_adapter_is_one_line_error(dirs, tmp_path):
    base, _ = dirs
    with pytest.raises(DebatelabError, match="not a PEFT adapter folder"):
        load_llm(f"hf:{base}", BackendOptions(device="cpu", adapter=str(tmp_path)))


def test_cli_adapter_override_reaches_backend(tmp_path, dirs):
    from conftest import write_config

    from debatelab.config import load_config

    _, adapter = dirs
    cfg = load_config(write_config(tmp_path / "c.yaml", backend={"batch_size": 4}), adapter=adapter)
    assert cfg.backend.adapter == str(adapter.resolve()) and cfg.backend.batch_size == 4
    assert cfg.fingerprint() != load_config(tmp_path / "c.yaml").fingerprint()


# ---- adapter folders without a valid adapter_config.json ------------------------------------
BAD_CONFIGS = {  # name: (adapter_config.json text or None for no file, expected message)
    "missing": (None, "not a PEFT adapter folder (no adapter_config.json)"),
    "not-json": ('{"peft_type": "LORA", "r": 4', "adapter_config.json is not valid JSON"),
    "not-a-mapping": ('["LORA", 4]', "adapter_config.json must be a JSON object, not a JSON array"),
    "wrong-peft-type": ('{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}',
                        "has peft_type 'PREFIX_TUNING'; only LoRA adapters"),
    "no-peft-type": ('{"r": 4, "lora_alpha": 8}', "has peft_type None; only LoRA adapters"),
}


def bad_adapter(good: Path, root: Path, case: str) -> Path:
    """A copy of a working adapter (weights included) whose adapter_config.json is ``case``."""
    import shutil

    folder = root / f"bad-{case}"
    shutil.copytree(good, folder)
    text, _ = BAD_CONFIGS[case]
    if text is None:
        (folder / "adapter_config.json").unlink()
    else:
        (folder / "adapter_config.json").write_text(text)
    return folder


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_adapter_config_is_one_line_in_the_hf_backend(dirs, tmp_path, case, monkeypatch):
    import debatelab.llm.hf_load as hf_load

    base, good = dirs
    loads = []  # the base model must not even load: the folder is checked first
    monkeypatch.setattr(hf_load.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    folder = bad_adapter(good, tmp_path, case)
    with pytest.raises(DebatelabError) as info:
        load_llm(f"hf:{base}", BackendOptions(device="cpu", threads=1, adapter=str(folder)))
    text = str(info.value)
    assert "\n" not in text and BAD_CONFIGS[case][1] in text and str(folder) in text
    assert loads == []


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_adapter_config_is_one_line_for_run_adapter(dirs, tmp_path, case, capsys):
    """`debatelab run --adapter DIR` on an hf model: exit code 2 and one stderr line, no traceback."""
    from conftest import make_bank, write_config

    from debatelab.cli import main

    base, good = dirs
    folder = bad_adapter(good, tmp_path, case)
    config = write_config(tmp_path / "c.yaml", model=f"hf:{base}", personas=str(make_bank(tmp_path / "bank.jsonl")),
                          rounds=1, repetitions=1, backend={"device": "cpu", "threads": 1}, reply={"max_tokens": 4})
    code = main(["run", str(config), "--adapter", str(folder), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and "\n" not in err and "Traceback" not in err
    assert err.startswith("error: ") and BAD_CONFIGS[case][1] in err
