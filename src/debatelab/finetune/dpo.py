"""DPO on top of an SFT adapter, after the paper's Table 1 ("r=8 DPO"): the adapter trained by
next-word prediction keeps training on preference pairs (chosen = the target party's answer,
rejected = the other party's), beta = 0.5, one epoch. Pairs are conversational JSONL::

    {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}

The reference model is the SFT model (base + SFT adapter), not the bare base. How: the SFT adapter
is loaded trainable (``PeftModel.from_pretrained(..., is_trainable=True)``) and handed to TRL's
``DPOTrainer`` with ``ref_model=None``. TRL (checked in 1.16 with peft >= 0.20) then copies the
pretrained ``default`` adapter into a second, frozen adapter named ``ref`` and computes the
reference log-probabilities with that adapter active, so the reference is exactly the SFT model,
and it costs one extra LoRA (megabytes), not a second copy of the base. (TRL uses "adapters
disabled", i.e. the bare base, as the reference only when it creates a fresh adapter itself from a
``peft_config``, or with peft < 0.20 and ``target_parameters`` adapters.) ``fit_dpo`` checks that
the ``ref`` adapter exists and fails loudly otherwise, rather than train silently against the
wrong reference. The tests confirm it: the first DPO step's loss is exactly log 2 (all implicit
rewards zero) and the ``ref`` weights still equal the SFT adapter after training. The alternative (merge the SFT adapter into the base, then a
fresh LoRA against the merged model) would also give the SFT reference but changes the adapter's
meaning (it would only apply on top of the merged weights), so it was not chosen: the DPO adapter
saved here is a complete replacement for the SFT one on the same base.

Only the trained ``default`` adapter is saved; the manifest names the SFT adapter (path and the
SHA-256 of its manifest) as its parent.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..errors import DebatelabError, RunFailed
from .base import (
    MANIFEST,
    MAX_BATCH,
    TrainResult,
    TrainSettings,
    base_identity,
    dataset_record,
    file_sha256,
    manifest_head,
    prepare_out_dir,
    read_chat_jsonl,
    read_manifest,
    resolve_base,
    train_and_record,
    write_manifest,
)
from .devices import NO_PICKLES, common_trainer_args, load_base, lora_record, resolve_precision

MAX_BETA = 100.0
"""Largest DPO beta (the paper's: 0.5; TRL's default: 0.1)."""


class DPOSettings(TrainSettings):
    """DPO settings: the paper's beta 0.5, one epoch, batch 32, QLoRA where CUDA is available."""

    beta: float = Field(0.5, gt=0, le=MAX_BETA)
    """Strength of the pull towards the reference (the SFT model), in (0, 100]; the paper fixes 0.5."""
    learning_rate: float = Field(5e-5, gt=0, le=1)
    """Peak AdamW learning rate for the LoRA weights, in (0, 1] (lower than SFT: DPO moves fast)."""
    per_device_batch: int = Field(4, ge=1, le=MAX_BATCH)
    """Pairs per forward pass, 1..4,096 (each pass runs chosen and rejected, plus the reference)."""


def _same_base(a: dict, b: dict) -> bool:
    """Same base weights: by content fingerprint where both have one, else by source."""
    if "weights" in a and "weights" in b:
        return a["weights"] == b["weights"]
    return a.get("source") == b.get("source")


def _parent_quantization(parent: dict) -> str | None:
    """How the SFT adapter's base was held ("4bit" | "none"), from its manifest, if recorded."""
    found = parent.get("quantization") or (parent.get("settings") or {}).get("quantization")
    return found if found in ("4bit", "none") else None


def fit_dpo(base: str, sft_adapter: Path, pairs_path: Path, out_dir: Path, settings: DPOSettings | None = None,
            *, overwrite: bool = False) -> TrainResult:
    """Continue the SFT adapter with DPO (reference = the SFT model); save and return the result."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from ..llm.weights import check_adapter_config, check_adapter_weights

    settings = settings or DPOSettings()
    sft_adapter, pairs_path = Path(sft_adapter), Path(pairs_path)
    parent = read_manifest(sft_adapter)
    check_adapter_config(sft_adapter)
    check_adapter_weights(sft_adapter, allow_pickle=False, opt_in=NO_PICKLES)  # PEFT would unpickle a .bin
    precision = resolve_precision(settings.device, settings.quantization, prefer=_parent_quantization(parent))
    rows = read_chat_jsonl(pairs_path, ("prompt", "chosen", "rejected"), "DPO pairs file")
    source = resolve_base(base)
    identity = base_identity(base, source)
    trained_on = parent.get("base_identity", {})
    if not _same_base(trained_on, identity):
        raise DebatelabError(
            f"SFT adapter {sft_adapter} was trained on {trained_on.get('model')!r}, not on {base!r} "
            "(base weights differ)"
        )
    if Path(out_dir).resolve() == sft_adapter.resolve():
        raise DebatelabError("the DPO adapter needs its own folder, not the SFT adapter's")
    out_dir = prepare_out_dir(Path(out_dir), overwrite)

    model, tokenizer = load_base(source, precision)
    model = PeftModel.from_pretrained(model, str(sft_adapter), is_trainable=True)  # adapter name "default"
    args = DPOConfig(**common_trainer_args(settings, precision, out_dir), beta=settings.beta)
    trainer = DPOTrainer(
        model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.ref_model is not None or "ref" not in getattr(peft_model, "peft_config", {}):
        raise RunFailed(
            "this TRL version did not set up the SFT adapter as DPO reference (no frozen 'ref' adapter); "
            "refusing to train against the bare base model"
        )
    record = train_and_record(trainer, settings, precision)

    peft_model.set_adapter("default")
    trained = peft_model.eval()
    trained.save_pretrained(str(out_dir), selected_adapters=["default"])
    tokenizer.save_pretrained(str(out_dir))
    manifest = {
        **manifest_head("dpo", base),
        "base_identity": identity,
        "parent": {"path": str(sft_adapter.resolve()), "kind": parent.get("kind"),
                   "manifest_sha256": file_sha256(sft_adapter / MANIFEST)},
        "reference": "sft",
        "dataset": dataset_record(pairs_path, rows),
        "settings": settings.model_dump(mode="json"),
        "lora": lora_record(trained),
        **record,
    }
    write_manifest(out_dir, manifest)  # last: its presence marks the adapter complete
    return TrainResult(out_dir, manifest, trained, tokenizer)


def train_dpo(base: str, sft_adapter: Path, pairs_path: Path, out_dir: Path, settings: DPOSettings | None = None,
              *, overwrite: bool = False) -> Path:
    """DPO-train the SFT adapter ``sft_adapter`` of ``base`` on preference pairs; returns ``out_dir``
    once its manifest is written."""
    return fit_dpo(base, sft_adapter, pairs_path, out_dir, settings, overwrite=overwrite).path
