"""Loading transformers models (hub ids or local folders) into :class:`HFLLM`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from ..errors import DebatelabError, first_line
from .hf import HFLLM
from .options import BackendOptions
from .weights import (
    PICKLE_OPT_IN,
    TRUST_CODE_OPT_IN,
    check_adapter_config,
    check_adapter_weights,
    check_model_weights,
    dir_fingerprint,
)


def resolve_device_dtype(options: BackendOptions) -> tuple[str, torch.dtype]:
    """Device and dtype for ``options``; sets torch's CPU threads when ``options.threads`` is given.

    CPU defaults, chosen with ``debatelab bench`` on the embedded model (2-core AMD EPYC with
    avx512_bf16, 40 debates in flight; numbers in the bench JSON):

    - ``threads=None`` keeps torch's default of one intra-op thread per physical core. On 2 cores,
      2 threads gave 19.5 wave tokens/s against 11.3 with 1 (a wave's prompt processing is compute
      bound); even one request at a time was not faster on 1 thread (5.3 vs 5.7 tokens/s).
    - ``dtype=auto`` stays float32 on CPU. bfloat16 is about 1.75x faster, but its survey
      distributions missed the tolerance (mean |delta expected score| 0.12 > 0.1, mean TV 0.033 <
      0.05, over 120 survey prompts; ``debatelab.bench.agreement``), and its results depend on the
      batch: only 2 of 10 debates had the same transcript one request at a time as in a wave, so
      ``batch_size`` and ``max_in_flight`` would no longer be mere runtime knobs. float32 gave
      identical transcripts in both modes. Ask for ``dtype: bfloat16`` where speed matters more.
    """
    cuda = torch.cuda.is_available()
    if options.device == "cuda" and not cuda:
        raise DebatelabError("device 'cuda' requested but torch sees no CUDA device")
    device = "cuda" if options.device == "cuda" or (options.device == "auto" and cuda) else "cpu"
    name = options.dtype if options.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if options.threads and device == "cpu":
        torch.set_num_threads(options.threads)
    return device, getattr(torch, name)


def _quantization_config(options: BackendOptions, device: str) -> Any:
    if options.quantization == "none":
        return None
    if device != "cuda":
        raise DebatelabError(f"quantization {options.quantization!r} needs CUDA (bitsandbytes); use 'none' on CPU")
    from transformers import BitsAndBytesConfig

    if options.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def load_pretrained(source: str, options: BackendOptions, identity: dict[str, Any]) -> HFLLM:
    hf_logging.disable_progress_bar()  # stderr stays ours: a run has its own bar, an error one line
    device, dtype = resolve_device_dtype(options)
    adapter = Path(options.adapter).expanduser() if options.adapter else None
    if adapter is not None:  # checked before the base loads: a bad folder fails in a second, as one line
        check_adapter_config(adapter)
        check_adapter_weights(adapter, options.allow_pickle)
    if Path(source).is_dir():
        check_model_weights(Path(source), "model folder", options.allow_pickle)
    # trust_remote_code is always the option's bool (transformers reads None as "ask on the
    # terminal"); use_safetensors=None lets transformers fall back to pickles, so only the opt-in.
    common = {"revision": options.revision, "trust_remote_code": options.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=None if options.allow_pickle else True,
            quantization_config=_quantization_config(options, device), **common,
        )
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc, options) from exc
    if options.quantization == "none":
        model = model.to(device)
    ident = {**identity, "dtype": str(dtype).removeprefix("torch."), "quantization": options.quantization}
    if adapter is not None:
        model, ident["adapter"] = _apply_adapter(model, adapter)
    return HFLLM(model, tokenizer, ident, options)


def _load_error(source: str, exc: Exception, options: BackendOptions) -> DebatelabError:
    """One line for a failed load; where a safety default caused it, the line names the opt-in."""
    first = first_line(exc)
    if "custom code" in first and not options.trust_remote_code:
        first += f" It would run on load; only if you trust its author, set {TRUST_CODE_OPT_IN}."
    elif "safetensors" in first and not options.allow_pickle and not Path(source).is_dir():  # a hub id
        first += f" Only safetensors weights load unless you set {PICKLE_OPT_IN} (pickles can run code)."
    return DebatelabError(f"cannot load model {source!r}: {first}")


def _apply_adapter(model: Any, adapter: Path) -> tuple[Any, dict[str, str]]:
    """Base + LoRA adapter (folder already checked); the adapter's content fingerprint joins the
    model identity, so a tuned model never shares run directories or debate ids with its base."""
    try:
        from peft import PeftModel
    except ImportError:
        raise DebatelabError("adapters need peft: pip install 'debatelab[train]'") from None
    try:
        tuned = PeftModel.from_pretrained(model, str(adapter)).eval()
    except (OSError, ValueError, TypeError, KeyError) as exc:  # e.g. a config field PEFT does not know
        raise DebatelabError(f"cannot load adapter {adapter}: {first_line(exc)}") from exc
    return tuned, {"path": str(adapter.resolve()), "weights": dir_fingerprint(adapter)}


def load_hf(name: str, options: BackendOptions) -> HFLLM:
    local = Path(name).expanduser()
    if not local.is_dir() and name.startswith(("/", ".", "~")):
        # clearly a path, not a hub id: say so instead of the hub's "Repo id must be..." message
        raise DebatelabError(f"cannot load model {name!r}: no such directory")
    source = str(local.resolve()) if local.is_dir() else name
    identity = {"backend": "hf", "model": source, "revision": options.revision}
    if local.is_dir():
        identity["weights"] = dir_fingerprint(local)
    return load_pretrained(source, options, identity)
