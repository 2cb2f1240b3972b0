"""Supervised fine-tuning (next-word prediction) of a LoRA adapter, after the paper's appendix A.2.

TRL's ``SFTTrainer`` with a PEFT ``LoraConfig`` on a conversational prompt/completion JSONL file.
The defaults are the appendix's: r = 256, alpha = 2r (512; alpha follows r unless set), dropout
0.05, bias "none", the seven attention and MLP projections, batch 32, one epoch, and QLoRA (4-bit
base) where CUDA is available, plain LoRA on CPU. Rows::

    {"prompt": [{"role": "user", "content": "..."}], "completion": [{"role": "assistant", "content": "..."}]}

(other keys are ignored). The loss covers the completion only: the model learns the answers, not
the questions. bf16 on CUDA, fp32 on CPU. The adapter folder holds the adapter, the tokenizer and,
written last, ``manifest.json`` (base model and its fingerprint, dataset hash, settings, the LoRA
and trainer settings as applied, LoRA or QLoRA and why, loss curve, library versions, runtime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from .base import (
    TrainResult,
    TrainSettings,
    base_identity,
    dataset_record,
    manifest_head,
    prepare_out_dir,
    read_chat_jsonl,
    resolve_base,
    train_and_record,
    write_manifest,
)
from .devices import common_trainer_args, load_base, lora_record, resolve_precision

# The appendix's list: q, v, k, o, up, down and gate projections.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_RANK = 1_024
"""Largest LoRA rank (the paper's largest: 256); beyond it an adapter is no longer low-rank."""
MAX_ALPHA = 65_536
"""Largest LoRA alpha (the paper's largest: 2 x 256 = 512)."""
MAX_TARGETS = 64


class SFTSettings(TrainSettings):
    """Next-word-prediction LoRA settings; every default is the paper's (appendix A.2)."""

    r: int = Field(256, ge=1, le=MAX_RANK)
    """LoRA rank, 1..1,024: how many trainable weights (appendix A.2: 256; Table 1 sweeps 16-256)."""
    alpha: int | None = Field(None, ge=1, le=MAX_ALPHA)
    """LoRA scale numerator, 1..65,536; None means 2r (512 at r = 256), as in the paper."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA branch (paper: 0.05)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train along with the adapter (paper: none)."""
    target_modules: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = Field(
        DEFAULT_TARGETS, min_length=1, max_length=MAX_TARGETS)
    """Linear layers that get adapters, 1..64 names (the paper: every attention and MLP projection)."""

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r


def fit_sft(base: str, dataset_path: Path, out_dir: Path, settings: SFTSettings | None = None,
            *, overwrite: bool = False) -> TrainResult:
    """Train and save a LoRA adapter; return it together with the trained model in memory."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    settings = settings or SFTSettings()
    dataset_path = Path(dataset_path)
    precision = resolve_precision(settings.device, settings.quantization)
    rows = read_chat_jsonl(dataset_path, ("prompt", "completion"), "SFT dataset")
    source = resolve_base(base)
    out_dir = prepare_out_dir(Path(out_dir), overwrite)

    model, tokenizer = load_base(source, precision)
    lora = LoraConfig(
        r=settings.r, lora_alpha=settings.lora_alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), bias=settings.bias, task_type="CAUSAL_LM",
    )
    args = SFTConfig(**common_trainer_args(settings, precision, out_dir), completion_only_loss=True, packing=False)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, peft_config=lora,
    )
    record = train_and_record(trainer, settings, precision)

    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    trained.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    manifest = {
        **manifest_head("sft", base),
        "base_identity": base_identity(base, source),
        "dataset": dataset_record(dataset_path, rows),
        "settings": settings.model_dump(mode="json"),
        "lora": lora_record(trained),
        **record,
    }
    write_manifest(out_dir, manifest)  # last: its presence marks the adapter complete
    return TrainResult(out_dir, manifest, trained, tokenizer)


def train_sft(base: str, dataset_path: Path, out_dir: Path, settings: SFTSettings | None = None,
              *, overwrite: bool = False) -> Path:
    """Fine-tune ``base`` (a model string: ``embedded`` or ``hf:<id or dir>``) on a prompt/completion
    JSONL file with LoRA; the adapter folder ``out_dir`` is returned once its manifest is written."""
    return fit_sft(base, dataset_path, out_dir, settings, overwrite=overwrite).path
