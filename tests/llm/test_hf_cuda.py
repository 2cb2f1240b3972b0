"""The transformers backend on CUDA: bf16 and bitsandbytes 8-bit/4-bit loading.

The CUDA tests are skipped without a GPU (CI has none); scripts/gpu_check.sh runs them on a GPU
machine. The quantized models must give the same survey distributions as the bf16 model within
a tolerance per quantization. The tolerances were calibrated on CPU by simulating the two schemes
on this tiny model (NF4 blockwise absmax with blocks of 64; LLM.int8 row-wise absmax for weights
and activations, outlier features kept in 16 bits): total variation from bf16 of 0.012-0.016
(8-bit) and 0.045-0.12 (4-bit) per prompt, while a model with other random weights is 0.37-0.60
away. The 8-bit simulation was run by hand while calibrating; the NF4 side and the other-weights
distance are what ``test_tolerances_tell_quantization_error_from_another_model`` re-checks on CPU.
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

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SCALE = tuple(str(i) for i in range(11))
# Survey distributions vs the bf16 model: (largest total variation of one prompt, mean over
# prompts, largest |difference of expected 0-10 scores|).
TOLERANCE = {"8bit": (0.05, 0.03, 0.15), "4bit": (0.2, 0.12, 0.3)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _prompts() -> list[Prompt]:
    return [Prompt(messages=(Message("system", f"You are Alice {i}."), Message("user", "debate climate " * (i + 1))),
                   assistant_prefix="Alice:") for i in range(5)]


def _distributions(llm) -> list[list[float]]:
    scores = llm.score_options([ScoreRequest(p, SCALE) for p in _prompts()])
    return [normalise(s.logprobs) for s in scores]


@needs_cuda
def test_bf16_on_cuda_matches_cpu_float32(model_dir: Path) -> None:
    gpu = load_llm(f"hf:{model_dir}", BackendOptions(device="cuda"))
    cpu = load_llm(f"hf:{model_dir}", BackendOptions(device="cpu", dtype="float32"))
    assert gpu.identity()["dtype"] == "bfloat16" and gpu.device.type == "cuda"
    for p_gpu, p_cpu in zip(_distributions(gpu), _distributions(cpu)):
        assert max(abs(a - b) for a, b in zip(p_gpu, p_cpu)) < 0.05
    reqs = [GenerateRequest(p, temperature=0.0, max_tokens=12) for p in _prompts()]
    batched = gpu.generate(reqs)
    assert all(o.completion_tokens <= 12 for o in batched)


def _tv(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q))


def _expected(p: list[float]) -> float:
    return sum(i * x for i, x in enumerate(p))


def check_close(dists: list[list[float]], reference: list[list[float]], bits: str) -> None:
    """Every distribution is a distribution, and close to the reference by ``TOLERANCE[bits]``."""
    most, mean, score = TOLERANCE[bits]
    assert len(dists) == len(reference) == 5
    for probs in dists:
        assert probs is not None and all(math.isfinite(p) and p >= 0 for p in probs) and abs(sum(probs) - 1) < 1e-6
    tvs = [_tv(p, r) for p, r in zip(dists, reference)]
    assert max(tvs) < most, f"{bits}: total variation per prompt {tvs}"
    assert sum(tvs) / len(tvs) < mean, f"{bits}: mean total variation {sum(tvs) / len(tvs)}"
    gaps = [abs(_expected(p) - _expected(r)) for p, r in zip(dists, reference)]
    assert max(gaps) < score, f"{bits}: expected-score differences {gaps}"


@needs_cuda
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_bitsandbytes_quantized_loading(model_dir: Path, bits: str) -> None:
    pytest.importorskip("bitsandbytes")
    llm = load_llm(f"hf:{model_dir}", BackendOptions(device="cuda", quantization=bits))
    assert llm.identity()["quantization"] == bits
    assert getattr(llm.model, "is_loaded_in_8bit" if bits == "8bit" else "is_loaded_in_4bit", False)
    outs = llm.generate([GenerateRequest(p, temperature=1.0, max_tokens=8, seed=i) for i, p in enumerate(_prompts())])
    assert len(outs) == 5 and all(o.completion_tokens >= 1 for o in outs)
    bf16 = load_llm(f"hf:{model_dir}", BackendOptions(device="cuda"))
    assert bf16.identity()["dtype"] == "bfloat16" and bf16.identity()["quantization"] == "none"
    quantized, reference = _distributions(llm), _distributions(bf16)
    check_close(quantized, reference, bits)
    assert max(_tv(p, r) for p, r in zip(quantized, reference)) > 1e-4  # the weights really were quantized


# ---- the tolerances, on CPU -----------------------------------------------------------------
NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)


def _nf4_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' NF4 as arithmetic: blocks of 64, scaled by their absmax, nearest code."""
    code = torch.tensor(NF4_CODE)
    blocks = weight.float().reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    nearest = ((blocks / absmax).unsqueeze(-1) - code).abs().argmin(-1)
    return (code[nearest] * absmax).reshape(weight.shape).to(weight.dtype)


def test_tolerances_tell_quantization_error_from_another_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    options = BackendOptions(device="cpu", dtype="bfloat16", threads=1)
    reference = _distributions(load_llm(f"hf:{tiny_model_dir}", options))
    simulated = load_llm(f"hf:{tiny_model_dir}", options)
    with torch.no_grad():
        for name, module in simulated.model.named_modules():
            if isinstance(module, torch.nn.Linear) and "lm_head" not in name:  # what bitsandbytes quantizes
                module.weight.copy_(_nf4_round_trip(module.weight))
    check_close(_distributions(simulated), reference, "4bit")
    other = load_llm(f"hf:{build_tiny_model(tmp_path / 'other', seed=1)}", options)
    for bits in TOLERANCE:
        with pytest.raises(AssertionError):
            check_close(_distributions(other), reference, bits)
