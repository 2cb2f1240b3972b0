"""Untrusted model files: pickled weights and shipped Python code do not run unless the user opts in.

Every folder here is built locally from the tiny random model; the pickled copies hold the same
weights, so an opted-in load must score exactly like the safetensors original.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from debatelab.errors import DebatelabError
from debatelab.llm import hf_load, load_llm, weights
from debatelab.llm.base import Message, Prompt, ScoreRequest
from debatelab.llm.options import BackendOptions

SCALE = tuple(str(i) for i in range(11))
CPU = {"device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("safety")


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def pickled_model(root: Path, base: Path) -> Path:
    """The base model with its weights as pytorch_model.bin instead of model.safetensors."""
    folder = root / "pickled-model"
    shutil.copytree(base, folder)
    (folder / "model.safetensors").unlink()
    torch.save(AutoModelForCausalLM.from_pretrained(base).state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def adapters(root: Path, base: Path) -> tuple[Path, Path]:
    """One LoRA adapter saved twice: as safetensors and as a pickled adapter_model.bin."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # a fresh LoRA is a no-op (B = 0); make it change the model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(root / "adapter-safe")
    model.save_pretrained(root / "adapter-pickled", safe_serialization=False)
    assert not (root / "adapter-pickled" / "adapter_model.safetensors").exists()
    return root / "adapter-safe", root / "adapter-pickled"


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make any torch.load fail the test loudly (and record that it was attempted)."""
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise AssertionError("torch.load was called on a refused file")

    monkeypatch.setattr(torch, "load", refuse)
    return calls


def _scores(llm: Any) -> tuple[float, ...]:
    prompt = Prompt(messages=(Message("user", "debate climate"),), assistant_prefix="")
    return llm.score_options([ScoreRequest(prompt, SCALE)])[0].logprobs


def _one_line(exc: pytest.ExceptionInfo[DebatelabError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---- pickled model weights ----------------------------------------------------------------
def test_pickled_model_is_refused_by_default(pickled_model: Path, no_unpickling: list[Any]) -> None:
    with pytest.raises(DebatelabError) as exc:
        load_llm(f"hf:{pickled_model}", BackendOptions(**CPU))
    text = _one_line(exc)
    assert str(pickled_model) in text and "pytorch_model.bin" in text
    assert "can run code" in text and "allow_pickle: true" in text
    assert no_unpickling == []


def test_pickled_model_loads_with_opt_in(base: Path, pickled_model: Path) -> None:
    opted = load_llm(f"hf:{pickled_model}", BackendOptions(**CPU, allow_pickle=True))
    assert _scores(opted) == pytest.approx(_scores(load_llm(f"hf:{base}", BackendOptions(**CPU))))
    # the pickled weights are what the identity fingerprints (a config-only fingerprint would let
    # two different pickled models share run directories)
    changed = pickled_model.parent / "pickled-changed"
    shutil.copytree(pickled_model, changed)
    data = bytearray((changed / "pytorch_model.bin").read_bytes())
    data[-100] ^= 0xFF
    (changed / "pytorch_model.bin").write_bytes(bytes(data))
    assert weights.dir_fingerprint(changed) != opted.identity()["weights"]


# ---- pickled adapters ---------------------------------------------------------------------
def test_pickled_adapter_is_refused_before_unpickling(base: Path, adapters: tuple[Path, Path],
                                                      no_unpickling: list[Any]) -> None:
    _, pickled = adapters
    with pytest.raises(DebatelabError) as exc:
        load_llm(f"hf:{base}", BackendOptions(**CPU, adapter=str(pickled)))
    text = _one_line(exc)
    assert str(pickled) in text and "adapter_model.safetensors" in text and "allow_pickle: true" in text
    assert no_unpickling == []


def test_pickled_adapter_loads_with_opt_in(base: Path, adapters: tuple[Path, Path]) -> None:
    safe, pickled = adapters
    from_pickle = load_llm(f"hf:{base}", BackendOptions(**CPU, adapter=str(pickled), allow_pickle=True))
    from_safe = load_llm(f"hf:{base}", BackendOptions(**CPU, adapter=str(safe)))
    assert _scores(from_pickle) == pytest.approx(_scores(from_safe))
    assert from_pickle.identity()["adapter"]["weights"] != from_safe.identity()["adapter"]["weights"]


def test_adapter_without_weights_is_one_line_error(base: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    shutil.copy(adapters[0] / "adapter_config.json", empty)
    with pytest.raises(DebatelabError, match="no adapter_model.safetensors"):
        load_llm(f"hf:{base}", BackendOptions(**CPU, adapter=str(empty)))
    with pytest.raises(DebatelabError, match="cannot load adapter") as exc:  # opted in: PEFT's complaint
        load_llm(f"hf:{base}", BackendOptions(**CPU, adapter=str(empty), allow_pickle=True))
    _one_line(exc)


def test_identity_has_revision_and_adapter_fingerprint(base: Path, adapters: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    safe, _ = adapters
    ident = load_llm(f"hf:{base}", BackendOptions(**CPU, adapter=str(safe))).identity()
    assert "revision" in ident and ident["revision"] is None
    assert ident["adapter"]["weights"] == weights.dir_fingerprint(safe)
    changed = tmp_path / "adapter-changed"
    shutil.copytree(safe, changed)
    data = bytearray((changed / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (changed / "adapter_model.safetensors").write_bytes(bytes(data))
    assert weights.dir_fingerprint(changed) != ident["adapter"]["weights"]


# ---- code shipped with a model ------------------------------------------------------------
@pytest.fixture(scope="module")
def remote_code(root: Path, base: Path) -> tuple[Path, Path]:
    """A model folder whose config maps its own model type to a module in the folder; importing
    that module writes a marker file."""
    folder, marker = root / "remote-code", root / "remote-code-ran"
    shutil.copytree(base, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="debatelab_custom", architectures=["CustomForCausalLM"], auto_map={
        "AutoConfig": "custom_model.CustomConfig", "AutoModelForCausalLM": "custom_model.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom_model.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('custom code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'debatelab_custom'\n\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    return folder, marker


def test_shipped_code_does_not_run_by_default(remote_code: tuple[Path, Path]) -> None:
    folder, marker = remote_code
    with pytest.raises(DebatelabError) as exc:
        load_llm(f"hf:{folder}", BackendOptions(**CPU))
    text = _one_line(exc)
    assert str(folder) in text and "trust_remote_code: true" in text
    assert not marker.exists()


def test_shipped_code_runs_when_trusted(remote_code: tuple[Path, Path], tmp_path: Path) -> None:
    """The fixture is live: with the opt-in the module is imported. In a subprocess, so transformers'
    module cache (and its sys.path entry) go to a temporary folder."""
    folder, marker = remote_code
    code = ("from debatelab.llm import load_llm; from debatelab.llm.options import BackendOptions; "
            f"load_llm('hf:{folder}', BackendOptions(device='cpu', trust_remote_code=True))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    try:
        subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300, capture_output=True)
        assert marker.read_text() == "custom code ran"
    finally:
        marker.unlink(missing_ok=True)


@pytest.mark.parametrize("trust, pickles", [(False, False), (True, True)])
def test_loader_passes_exactly_the_options(base: Path, monkeypatch: pytest.MonkeyPatch, trust: bool,
                                           pickles: bool) -> None:
    """trust_remote_code reaches tokenizer and model as the option's bool (None would make
    transformers ask on the terminal); use_safetensors is True unless pickles are allowed."""
    seen: dict[str, dict[str, Any]] = {}

    def spy(name: str, real: Any) -> Any:
        def load(source: str, **kwargs: Any) -> Any:
            seen[name] = kwargs
            return real(source, **kwargs)
        return load

    monkeypatch.setattr(hf_load.AutoTokenizer, "from_pretrained", spy("tokenizer", hf_load.AutoTokenizer.from_pretrained))
    monkeypatch.setattr(hf_load.AutoModelForCausalLM, "from_pretrained",
                        spy("model", hf_load.AutoModelForCausalLM.from_pretrained))
    load_llm(f"hf:{base}", BackendOptions(**CPU, trust_remote_code=trust, allow_pickle=pickles))
    assert seen["tokenizer"]["trust_remote_code"] is trust and seen["model"]["trust_remote_code"] is trust
    assert seen["model"]["use_safetensors"] is (None if pickles else True)


# ---- fine-tuning loads the same way -------------------------------------------------------
def test_training_refuses_a_pickled_base(pickled_model: Path, no_unpickling: list[Any]) -> None:
    from debatelab.finetune.devices import Precision, load_base

    with pytest.raises(DebatelabError) as exc:
        load_base(str(pickled_model), Precision("cpu", "float32", bf16=False, fp16=False))
    text = _one_line(exc)
    assert str(pickled_model) in text and "pickled weights" in text and "safetensors only" in text
    assert no_unpickling == []


def test_training_loads_without_remote_code(remote_code: tuple[Path, Path]) -> None:
    from debatelab.finetune.devices import Precision, load_base

    folder, marker = remote_code
    with pytest.raises(DebatelabError, match="custom code") as exc:
        load_base(str(folder), Precision("cpu", "float32", bf16=False, fp16=False))
    _one_line(exc)
    assert not marker.exists()


def test_dpo_refuses_a_pickled_sft_adapter(base: Path, adapters: tuple[Path, Path], tmp_path: Path,
                                           no_unpickling: list[Any]) -> None:
    from debatelab.finetune.dpo import fit_dpo

    sft = tmp_path / "sft"
    shutil.copytree(adapters[1], sft)
    (sft / "manifest.json").write_text(json.dumps({"kind": "sft"}))  # complete, as far as DPO can tell
    with pytest.raises(DebatelabError, match="adapter_model.safetensors") as exc:
        fit_dpo(f"hf:{base}", sft, tmp_path / "pairs.jsonl", tmp_path / "dpo")
    assert str(sft) in _one_line(exc) and "safetensors only" in str(exc.value)
    assert no_unpickling == [] and not (tmp_path / "dpo").exists()
