"""What SFT and DPO training share: settings, the base model, data files and adapter manifests
(devices, LoRA vs QLoRA and model loading are in ``devices``).

An adapter folder is complete only when it holds ``manifest.json``: the trainers write the adapter
weights and the tokenizer first and the manifest last, atomically. A folder without a manifest is
an interrupted run, which the trainers overwrite; a complete one they refuse to overwrite unless
told to.

torch, transformers, peft and trl are imported inside the functions, so importing this module (or
the settings classes of ``sft`` and ``dpo``) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field, model_validator

from ..errors import DebatelabError
from ..files import atomic_open
from ..readers import read_jsonl
from ..validation import StrictModel
from .devices import Device, Precision, Quantization, trainer_record

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

# Upper bounds on the training settings, each far above the paper (batch 32, 1 epoch, prompts +
# answers of a few hundred tokens) but low enough that a typo fails at load time, not hours into a
# run (or as an out-of-memory crash).
SEED_LIMIT = 2**32
"""Seeds lie in [0, 2**32): numpy's and transformers' ``set_seed`` refuse any other."""
MAX_BATCH = 4_096
"""Examples per optimizer step or per forward pass."""
MAX_EPOCHS = 100
MAX_LENGTH = 131_072
"""Longest tokenised example (128 Ki tokens, beyond any current model's context)."""
MAX_LOGGING_STEPS = 1_000_000


# ---- base model ---------------------------------------------------------------------------
class TrainSettings(StrictModel):
    """Fields every trainer shares; SFTSettings and DPOSettings add their own and set defaults."""

    # StrictModel: .inf and .nan are refused in every float field (learning_rate, epochs, beta).

    learning_rate: float = Field(2e-4, gt=0, le=1)
    """Peak AdamW learning rate for the LoRA weights (linear decay to zero), in (0, 1]."""
    epochs: float = Field(1, gt=0, le=MAX_EPOCHS)
    """Passes over the data (the paper: 1), at most 100."""
    effective_batch: int = Field(32, ge=1, le=MAX_BATCH)
    """Examples per optimizer step (the paper: 32), 1..4,096."""
    per_device_batch: int = Field(8, ge=1, le=MAX_BATCH)
    """Examples per forward pass, 1..4,096; gradients accumulate over effective_batch /
    per_device_batch passes."""
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed for adapter initialisation, data order and dropout (the paper averages 3 seeds), in
    [0, 2**32): ``transformers.set_seed`` (numpy) refuses any other."""
    max_length: int = Field(512, ge=8, le=MAX_LENGTH)
    """Longest tokenised prompt + answer, 8..131,072; longer ones are truncated."""
    quantization: Quantization = "auto"
    """``auto``: QLoRA (4-bit NF4 base, bitsandbytes) where CUDA is available, as in the paper, plain
    LoRA on CPU; ``4bit`` insists on QLoRA, ``none`` on plain LoRA. The manifest says which ran and why."""
    device: Device = "auto"
    """Where to train: ``auto`` picks CUDA when available."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 20% slower."""
    logging_steps: int = Field(1, ge=1, le=MAX_LOGGING_STEPS)
    """Optimizer steps between loss-curve points, 1..1,000,000."""

    @model_validator(mode="after")
    def _batches_divide(self) -> "TrainSettings":
        if self.effective_batch % self.per_device_batch:
            raise ValueError(
                f"effective_batch ({self.effective_batch}) must be a multiple of per_device_batch ({self.per_device_batch})"
            )
        return self


def resolve_base(model: str) -> str:
    """A model string as a folder or hub id that ``from_pretrained`` can load.

    ``embedded`` is the cached safetensors conversion of the embedded SmolLM2 model; ``hf:<id or
    dir>`` is that id, or the absolute path of that directory. Remote-API and scripted models have
    no weights to train, so they are refused.
    """
    kind, _, rest = model.partition(":")
    if kind == "embedded" and not rest:
        from ..llm.embedded import ensure_converted

        return str(ensure_converted())
    if kind == "hf" and rest:
        local = Path(rest).expanduser()
        if local.is_dir():
            return str(local.resolve())
        if rest.startswith(("/", ".", "~")):
            raise DebatelabError(f"no weights for {model!r}: no such directory")
        return rest
    raise DebatelabError(
        f"no weights for model {model!r}: training and benchmarks need local weights (use 'embedded' or 'hf:<hub id or dir>')"
    )


def base_identity(model: str, source: str) -> dict[str, Any]:
    """What identifies the base weights: the model string, what it resolved to and, for a local
    folder, a content fingerprint (the same one the ``hf`` backend uses)."""
    ident: dict[str, Any] = {"model": model, "source": source}
    if Path(source).is_dir():
        from ..llm.weights import dir_fingerprint

        ident["weights"] = dir_fingerprint(Path(source))
    return ident


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- data ---------------------------------------------------------------------------------
def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    )


def read_chat_jsonl(path: Path, keys: Sequence[str], what: str) -> list[dict[str, Any]]:
    """Rows of a conversational JSONL file, each cut down to ``keys`` (lists of chat messages).

    Extra keys (ids, metadata) are dropped; a missing key, a value that is not a message list, or a
    line that is not JSON is reported with its line number.
    """
    rows: list[dict[str, Any]] = []
    for number, row in read_jsonl(Path(path), what):
        for key in keys:
            if not _is_messages(row.get(key)):
                raise DebatelabError(
                    f"{what} {path}, line {number}: {key!r} must be a non-empty list of "
                    '{"role": ..., "content": ...} messages'
                )
        rows.append({key: row[key] for key in keys})
    if not rows:
        raise DebatelabError(f"{what} {path} has no rows")
    return rows


# ---- output folders and manifests ---------------------------------------------------------
def prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse a complete adapter there unless ``overwrite`` (then it is marked
    incomplete first, so a crash while retraining never leaves a stale manifest behind)."""
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if manifest.exists():
        if not overwrite:
            raise DebatelabError(f"{out_dir} already holds a trained adapter ({MANIFEST}); pass overwrite to retrain")
        manifest.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def read_manifest(adapter_dir: Path) -> dict[str, Any]:
    """The manifest of a complete adapter folder."""
    path = Path(adapter_dir) / MANIFEST
    if not path.is_file():
        raise DebatelabError(f"{adapter_dir} is not a complete adapter (no {MANIFEST}; was its training interrupted?)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    with atomic_open(path) as fh:
        json.dump(manifest, fh, indent=2, sort_keys=False)
        fh.write("\n")
    return path


LOG_KEYS = ("loss", "grad_norm", "learning_rate", "rewards/margins", "rewards/accuracies", "mean_token_accuracy")


def loss_curve(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-step training logs (``{"step", "loss", ...}``), without the final summary entry."""
    curve = []
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            curve.append({"step": int(entry["step"]), **{k: float(entry[k]) for k in LOG_KEYS if k in entry}})
    return curve


def manifest_head(kind: str, base: str) -> dict[str, Any]:
    """The fields that open every adapter manifest."""
    return {"manifest_version": MANIFEST_VERSION, "kind": kind, "created": utc_now(), "base_model": base}


def dataset_record(path: Path, rows: Sequence[Any]) -> dict[str, Any]:
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "rows": len(rows)}


def train_and_record(trainer: Any, settings: Any, precision: Precision) -> dict[str, Any]:
    """Run ``trainer``; return the manifest fields about the run itself (timing, loss, versions)."""
    started = time.monotonic()
    output = trainer.train()
    runtime = time.monotonic() - started
    return {
        "seed": settings.seed, **precision.record(), "trainer": trainer_record(trainer),
        "optimizer_steps": int(trainer.state.global_step), "train_loss": float(output.training_loss),
        "loss_curve": loss_curve(trainer.state.log_history), "train_runtime_s": round(runtime, 3),
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in ("debatelab", "trl", "peft", "transformers", "torch", "datasets", "accelerate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class TrainResult:
    """A finished training run: the adapter folder, its manifest and the trained model in memory
    (a ``PeftModel`` in eval mode) with its tokenizer."""

    path: Path
    manifest: dict[str, Any]
    model: Any
    tokenizer: Any
