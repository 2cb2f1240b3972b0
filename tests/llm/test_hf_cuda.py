"""The transformers backend on CUDA: bf16 and bitsandbytes 8-bit/4-bit loading.

Skipped without a GPU (CI has none); scripts/gpu_check.sh runs it on a GPU machine.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_model

from debatelab.llm import load_llm
from debatelab.llm.base import GenerateRequest, Message, Prompt, ScoreRequest
from debatelab.llm.options import BackendOptions
from debatelab.survey import normalise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SCALE = tuple(str(i) for i in range(11))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _prompts() -> list[Prompt]:
    return [Prompt(messages=(Message("system", f"You are Alice {i}."), Message("user", "debate climate " * (i + 1))),
                   assistant_prefix="Alice:") for i in range(5)]


def _distributions(llm) -> list[list[float]]:
    scores = llm.score_options([ScoreRequest(p, SCALE) for p in _prompts()])
    return [normalise(s.logprobs) for s in scores]


def test_bf16_on_cuda_matches_cpu_float32(model_dir: Path) -> None:
    gpu = load_llm(f"hf:{model_dir}", BackendOptions(device="cuda"))
    cpu = load_llm(f"hf:{model_dir}", BackendOptions(device="cpu", dtype="float32"))
    assert gpu.identity()["dtype"] == "bfloat16" and gpu.device.type == "cuda"
    for p_gpu, p_cpu in zip(_distributions(gpu), _distributions(cpu)):
        assert max(abs(a - b) for a, b in zip(p_gpu, p_cpu)) < 0.05
    reqs = [GenerateRequest(p, temperature=0.0, max_tokens=12) for p in _prompts()]
    batched = gpu.generate(reqs)
    assert all(o.completion_tokens <= 12 for o in batched)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_bitsandbytes_quantized_loading(model_dir: Path, bits: str) -> None:
    pytest.importorskip("bitsandbytes")
    llm = load_llm(f"hf:{model_dir}", BackendOptions(device="cuda", quantization=bits))
    assert llm.identity()["quantization"] == bits
    assert getattr(llm.model, "is_loaded_in_8bit" if bits == "8bit" else "is_loaded_in_4bit", False)
    outs = llm.generate([GenerateRequest(p, temperature=1.0, max_tokens=8, seed=i) for i, p in enumerate(_prompts())])
    assert len(outs) == 5 and all(o.completion_tokens >= 1 for o in outs)
    reference = _distributions(load_llm(f"hf:{model_dir}", BackendOptions(device="cuda")))
    for probs, ref in zip(_distributions(llm), reference):
        assert all(math.isfinite(p) for p in probs) and abs(sum(probs) - 1) < 1e-6
        assert 0.5 * sum(abs(a - b) for a, b in zip(probs, ref)) < 0.5  # total variation: same model, coarser weights
