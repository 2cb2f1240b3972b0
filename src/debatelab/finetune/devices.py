"""Where and how a trainer runs: device, dtype, LoRA or QLoRA, and the base model loaded for it.

``quantization: auto`` (the default) follows the paper, which trained with QLoRA: a 4-bit NF4 base
(bitsandbytes) wherever CUDA is available, plain LoRA on CPU, where bitsandbytes' 4-bit kernels do
not run. The choice and the reason for it go into every adapter manifest.

torch and transformers are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import DebatelabError, first_line

Device = Literal["auto", "cpu", "cuda"]
Quantization = Literal["auto", "none", "4bit"]
NO_PICKLES = "training loads safetensors only, so convert the weights to safetensors first"
QUANT_HINT = "pip install 'debatelab[quant]'"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """How one training run holds the base model."""

    device: str  # "cpu" | "cuda"
    dtype: str  # weights dtype: "float32" | "bfloat16"
    bf16: bool  # mixed-precision flags for the trainer config
    fp16: bool
    quantization: str = "none"  # what was used: "none" (LoRA) | "4bit" (QLoRA)
    reason: str = ""  # why, in one sentence (for the manifest)

    @property
    def method(self) -> str:
        return "QLoRA" if self.quantization == "4bit" else "LoRA"

    def record(self) -> dict[str, str]:
        """The manifest fields that say which method was used and why."""
        return {"method": self.method, "quantization": self.quantization, "quantization_reason": self.reason,
                "device": self.device, "dtype": self.dtype}


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def resolve_precision(device: Device, quantization: Quantization, prefer: str | None = None) -> Precision:
    """bf16 on CUDA (fp32 weights with fp16 autocast where the card lacks bf16), fp32 on CPU, and
    QLoRA or LoRA as :func:`choose_quantization` decides. ``prefer`` is the quantization of the
    adapter being continued (DPO on an SFT adapter), which ``auto`` keeps where it can.

    TRL's configs default to bf16, which fails on CPU, so the flags are always set explicitly.
    """
    import torch

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise DebatelabError("device 'cuda' requested but torch sees no CUDA device")
    on_cuda = device == "cuda" or (device == "auto" and cuda)
    quant, reason = choose_quantization(quantization, on_cuda, device, prefer)
    if not on_cuda:
        return Precision("cpu", "float32", bf16=False, fp16=False, quantization=quant, reason=reason)
    if torch.cuda.is_bf16_supported():
        return Precision("cuda", "bfloat16", bf16=True, fp16=False, quantization=quant, reason=reason)
    return Precision("cuda", "float32", bf16=False, fp16=True, quantization=quant, reason=reason)


def choose_quantization(requested: Quantization, on_cuda: bool, device: Device,
                        prefer: str | None = None) -> tuple[str, str]:
    """("4bit" | "none", why). An explicit request is obeyed or refused; ``auto`` picks QLoRA on
    CUDA with bitsandbytes installed, else plain LoRA, and says which condition decided."""
    if requested == "4bit":
        if not on_cuda:
            raise DebatelabError("quantization '4bit' (QLoRA) needs CUDA and bitsandbytes; use 'none' or 'auto' on CPU")
        if not has_bitsandbytes():
            raise DebatelabError(f"quantization '4bit' needs bitsandbytes: {QUANT_HINT}")
        return "4bit", "quantization '4bit' was requested: QLoRA on a 4-bit NF4 base"
    if requested == "none":
        return "none", "quantization 'none' was requested: plain LoRA on the unquantized base"
    if not on_cuda:
        why = "device 'cpu' was requested" if device == "cpu" else "torch sees no CUDA device"
        return "none", f"auto: {why} and 4-bit QLoRA (bitsandbytes) needs CUDA, so plain LoRA"
    if prefer == "none":
        return "none", "auto: the adapter being continued was trained with plain LoRA, so plain LoRA"
    if not has_bitsandbytes():
        log.warning("CUDA is available but bitsandbytes is not: training plain LoRA, not QLoRA (%s)", QUANT_HINT)
        return "none", f"auto: CUDA is available but bitsandbytes is not installed ({QUANT_HINT}), so plain LoRA"
    return "4bit", "auto: CUDA is available, so QLoRA on a 4-bit NF4 base (bitsandbytes), as in the paper"


def _quantization_kwargs(precision: Precision) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if precision.bf16 else torch.float16
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute)
    return {"quantization_config": config, "dtype": compute, "device_map": {"": 0}}


def load_base(source: str, precision: Precision) -> tuple[Any, Any]:
    """The base causal LM (plain, or 4-bit for QLoRA, as ``precision`` says) and its tokenizer,
    with a pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": getattr(torch, precision.dtype)}
    if precision.quantization == "4bit":
        if not has_bitsandbytes():
            raise DebatelabError(f"quantization '4bit' needs bitsandbytes: {QUANT_HINT}")
        kwargs.update(_quantization_kwargs(precision))
    if Path(source).is_dir():
        from ..llm.weights import check_model_weights

        check_model_weights(Path(source), "base model folder", allow_pickle=False, opt_in=NO_PICKLES)
    # Training has no opt-ins: never custom code (None would ask on the terminal), never pickles.
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as exc:
        raise DebatelabError(f"cannot load base model {source!r}: {first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if precision.quantization == "none":
        model = model.to(precision.device)
    return model, tokenizer


def common_trainer_args(settings: Any, precision: Precision, out_dir: Path) -> dict[str, Any]:
    """TrainingArguments shared by the SFT and DPO configs: batches, precision, no checkpoints,
    no external loggers."""
    return {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": settings.per_device_batch,
        "gradient_accumulation_steps": settings.effective_batch // settings.per_device_batch,
        "num_train_epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "data_seed": settings.seed,
        "max_length": settings.max_length,
        "logging_steps": settings.logging_steps,
        checkpointing_arg(): settings.gradient_checkpointing,
        "bf16": precision.bf16,
        "fp16": precision.fp16,
        "use_cpu": precision.device == "cpu",
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def checkpointing_arg() -> str:
    """transformers 5.x renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old
    name warns); TRL configs still default the old one to True, the new name overrides it."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


TRAINER_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "learning_rate",
                "seed", "max_length", "bf16", "fp16", "beta", "loss_type", "completion_only_loss", "packing")


def trainer_record(trainer: Any) -> dict[str, Any]:
    """The settings the trainer actually ran with, read back from its config (not from ours)."""
    args = trainer.args
    found = {k: getattr(args, k) for k in TRAINER_KEYS if hasattr(args, k)}
    found = {k: _plain(v) for k, v in found.items()}
    found["effective_batch"] = (args.per_device_train_batch_size * args.gradient_accumulation_steps
                                * max(1, int(getattr(args, "world_size", 1))))
    return found


def lora_record(peft_model: Any, adapter: str = "default") -> dict[str, Any]:
    """The LoRA configuration of ``peft_model``'s ``adapter`` as PEFT applied it."""
    config = peft_model.peft_config[adapter]
    return {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "bias": config.bias,
            "target_modules": sorted(config.target_modules), "task_type": str(getattr(config.task_type, "value",
                                                                                        config.task_type))}


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a config value (enums and other objects as their string)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))
