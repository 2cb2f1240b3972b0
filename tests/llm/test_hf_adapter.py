"""Base model + LoRA adapter through the hf backend (tuned-model debates)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_model import build_tiny_model
from transformers import AutoModelForCausalLM

from debatelab.errors import DebatelabError
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
