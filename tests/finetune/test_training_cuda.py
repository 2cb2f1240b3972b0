"""SFT/DPO on CUDA: bf16 LoRA, 4-bit QLoRA (bitsandbytes), and ``auto``, which is QLoRA there.
Skipped without a GPU (CI has none); scripts/gpu_check.sh runs it on a GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_model

from debatelab.finetune.base import read_manifest
from debatelab.finetune.dpo import DPOSettings, train_dpo
from debatelab.finetune.sft import SFTSettings, train_sft

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("quantization", ["none", "4bit", "auto"])
def test_sft_then_dpo_on_cuda(tmp_path: Path, quantization: str) -> None:
    if quantization != "none":
        pytest.importorskip("bitsandbytes")
    used = "none" if quantization == "none" else "4bit"  # auto: QLoRA wherever CUDA and bitsandbytes are
    base = f"hf:{build_tiny_model(tmp_path / 'tiny')}"
    user = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    said = lambda a: [{"role": "assistant", "content": a}]  # noqa: E731
    sft_rows = [{"prompt": user(f"Rate problem {i} from 0 to 10."), "completion": said("2")} for i in range(16)]
    pairs = [{"prompt": user(f"Rate problem {i}."), "chosen": said("I would say 8."), "rejected": said("I would say 2.")}
             for i in range(8)]
    sft = train_sft(base, _jsonl(tmp_path / "sft.jsonl", sft_rows), tmp_path / "sft",
                    SFTSettings(r=8, effective_batch=8, per_device_batch=8, learning_rate=1e-2, quantization=quantization))
    manifest = read_manifest(sft)
    assert manifest["settings"]["quantization"] == quantization and manifest["loss_curve"]
    assert manifest["quantization"] == used and manifest["method"] == ("QLoRA" if used == "4bit" else "LoRA")
    assert manifest["quantization_reason"].startswith("auto: CUDA is available" if quantization == "auto"
                                                      else f"quantization '{quantization}' was requested")
    assert manifest["device"] == "cuda" and manifest["dtype"] in ("bfloat16", "float32")
    dpo = train_dpo(base, sft, _jsonl(tmp_path / "pairs.jsonl", pairs), tmp_path / "dpo",
                    DPOSettings(effective_batch=8, per_device_batch=4, learning_rate=5e-3, quantization=quantization))
    dpo_manifest = read_manifest(dpo)
    assert dpo_manifest["parent"] and dpo_manifest["quantization"] == used
