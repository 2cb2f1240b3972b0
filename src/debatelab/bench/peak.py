"""The machine's two roofs for the roofline (:mod:`.roofline`), measured on the spot and cached
per process: the ``torch.matmul`` peak (GFLOP/s) for a dtype, device and torch thread count, and
the read bandwidth (GB/s, 1e9 bytes/s) of a pure-read reduction over a tensor far larger than
any cache, the rate at which a decoding step can stream its key/value cache.

Nothing here imports :mod:`.roofline` (which re-exports these names): the model facts the
measure needs (its MLP shape, its dtype) are read from the model itself.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Protocol, Sequence

SQUARES = (1024, 2048, 4096)
"""Square matmul sizes of the peak measure (plus the model's MLP shape at ``MLP_ROWS`` rows)."""
MLP_ROWS = 2048
SHAPE_BUDGET_S = 1.0
"""Seconds of timed repeats per shape after its warm-up (at least one repeat)."""
MAX_REPEATS = 20
SKIP_OVER_S = 2.5
"""A shape whose one run would take longer than this at the best rate seen so far is skipped
(bf16 on a CPU without bf16 units would spend half a minute on 4096^3)."""
_PEAKS: dict[tuple[Any, ...], dict[str, Any]] = {}

BANDWIDTH_BYTES = 256 * 2**20
"""Size of the float32 tensor the bandwidth measure reads: far beyond any CPU cache, so every
pass streams from memory (tests shrink it)."""
BANDWIDTH_BUDGET_S = 0.5
"""Seconds of timed passes after the warm-up (at least one pass)."""
BANDWIDTH_MAX_REPEATS = 200
_BANDWIDTHS: dict[tuple[Any, ...], dict[str, Any]] = {}


class MlpShape(Protocol):
    """What the peak measure needs of a model's shape (a :class:`.roofline.ModelShape`, a :class:`Mlp`)."""

    @property
    def hidden(self) -> int: ...

    @property
    def intermediate(self) -> int: ...


class Mlp(NamedTuple):
    """A model's MLP dimensions, read from its config."""

    hidden: int
    intermediate: int


# ---- model facts ------------------------------------------------------------------------------
def text_config(model: Any) -> Any:
    """The config of the model's text stack (a multimodal config nests it)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def mlp_dims(model: Any) -> Mlp:
    """The model's MLP dimensions (intermediate: 4 x hidden when the config names none)."""
    config = text_config(model)
    return Mlp(config.hidden_size, getattr(config, "intermediate_size", None) or 4 * config.hidden_size)


def model_dtype(model: Any) -> Any:
    """The dtype the model computes in (that of its floating-point parameters)."""
    return getattr(model, "dtype", None) or next(p.dtype for p in model.parameters() if p.is_floating_point())


# ---- the matmul peak --------------------------------------------------------------------------
def peak_shapes(shape: MlpShape | None) -> list[tuple[int, int, int]]:
    """(m, k, n) of the measure: the squares and the model's MLP up-projection, smallest first."""
    shapes = [(s, s, s) for s in SQUARES]
    if shape is not None:
        shapes.append((MLP_ROWS, shape.hidden, shape.intermediate))
    return sorted(dict.fromkeys(shapes), key=lambda s: s[0] * s[1] * s[2])


def measure_peak(dtype: Any, device: Any, shapes: Sequence[tuple[int, int, int]], threads: int | None = None) -> dict[str, Any]:
    """The best ``torch.matmul`` rate (GFLOP/s) over ``shapes`` for this dtype, device and torch
    thread count, each shape warmed up then repeated for about ``SHAPE_BUDGET_S``; cached per
    process."""
    import torch

    threads = threads or torch.get_num_threads()
    key = (str(dtype), str(device), threads, tuple(shapes))
    if key not in _PEAKS:
        with _threads(torch, threads):
            _PEAKS[key] = _measure(torch, dtype, torch.device(device), shapes, threads)
    return _PEAKS[key]


def _measure(torch: Any, dtype: Any, device: Any, shapes: Sequence[tuple[int, int, int]], threads: int) -> dict[str, Any]:
    began, best, rows = time.perf_counter(), 0.0, []
    for m, k, n in shapes:
        flops = 2.0 * m * k * n
        if best and flops / (best * 1e9) > SKIP_OVER_S:
            rows.append({"m": m, "k": k, "n": n, "gflops": None, "skipped": "too slow at the rate seen so far"})
            continue
        seconds = _best_seconds(torch, dtype, device, m, k, n)
        rows.append({"m": m, "k": k, "n": n, "gflops": flops / seconds / 1e9, "seconds": seconds})
        best = max(best, rows[-1]["gflops"])
    return {"gflops": best, "dtype": str(dtype).removeprefix("torch."), "device": str(device), "threads": threads,
            "shapes": rows, "measure_s": time.perf_counter() - began}


def _best_seconds(torch: Any, dtype: Any, device: Any, m: int, k: int, n: int) -> float:
    sync = _sync(torch, device)
    with torch.inference_mode():
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        c = torch.matmul(a, b)  # warm-up: kernel choice and first-touch of the output
        sync()
        best, spent = float("inf"), 0.0
        for _ in range(MAX_REPEATS):
            start = time.perf_counter()
            torch.matmul(a, b, out=c)
            sync()
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
            if spent >= SHAPE_BUDGET_S:
                break
    return max(best, 1e-9)


def model_peak(backend: Any, shapes: Sequence[tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """The peak for the dtype and device the backend's model computes in."""
    model = backend.model
    return measure_peak(model_dtype(model), getattr(backend, "device", "cpu"), shapes or peak_shapes(mlp_dims(model)))


# ---- the read bandwidth -----------------------------------------------------------------------
def measure_bandwidth(device: Any, threads: int | None = None) -> dict[str, Any]:
    """The best read bandwidth (GB/s) of ``torch.sum`` over a float32 tensor of
    ``BANDWIDTH_BYTES`` on ``device`` with this torch thread count, warmed up then repeated for
    about ``BANDWIDTH_BUDGET_S``; cached per process. A sum reads every byte once and writes one
    scalar, so its rate is that of streaming a key/value cache through attention."""
    import torch

    threads = threads or torch.get_num_threads()
    key = (str(device), threads, BANDWIDTH_BYTES)
    if key not in _BANDWIDTHS:
        with _threads(torch, threads):
            seconds, nbytes = _best_read_seconds(torch, torch.device(device))
        _BANDWIDTHS[key] = {"gb_s": nbytes / seconds / 1e9, "bytes": nbytes, "device": str(device),
                            "threads": threads, "seconds": seconds}
    return _BANDWIDTHS[key]


def _best_read_seconds(torch: Any, device: Any) -> tuple[float, int]:
    """(best seconds of one pass, bytes read per pass)."""
    sync = _sync(torch, device)
    with torch.inference_mode():
        # ones, not empty: every page is touched (and mapped) before the timing starts
        x = torch.ones(max(BANDWIDTH_BYTES // 4, 1), dtype=torch.float32, device=device)
        torch.sum(x)  # warm-up: kernel choice, thread pool start
        sync()
        best, spent = float("inf"), 0.0
        for _ in range(BANDWIDTH_MAX_REPEATS):
            start = time.perf_counter()
            torch.sum(x)
            sync()
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
            if spent >= BANDWIDTH_BUDGET_S:
                break
        nbytes = x.numel() * x.element_size()
    return max(best, 1e-9), nbytes


def model_bandwidth(backend: Any) -> dict[str, Any]:
    """The read bandwidth of the device the backend's model runs on."""
    return measure_bandwidth(getattr(backend, "device", "cpu"))


# ---- helpers ----------------------------------------------------------------------------------
@contextmanager
def _threads(torch: Any, threads: int) -> Iterator[None]:
    """Torch's intra-op thread count set for a block, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sync(torch: Any, device: Any) -> Any:
    """A device barrier: kernels on CUDA run asynchronously, so time only after they finish."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
