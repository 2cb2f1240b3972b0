"""Model and adapter folders from untrusted sources: safetensors-only checks and content fingerprints.

No torch here: the vLLM backend and the fine-tuning pipeline use these checks too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DebatelabError

# Loading a pickle (``torch.load``) can run arbitrary code, so weights load from safetensors only
# unless the user opts in. These are the pickled names transformers and PEFT fall back to.
_PICKLED_WEIGHTS = ("pytorch_model*.bin", "adapter_model.bin")
PICKLE_OPT_IN = "`backend: {allow_pickle: true}`"
TRUST_CODE_OPT_IN = "`backend: {trust_remote_code: true}`"


def _pickled_files(folder: Path) -> list[str]:
    return sorted(f.name for pattern in _PICKLED_WEIGHTS for f in folder.glob(pattern))


def check_model_weights(folder: Path, what: str, allow_pickle: bool, opt_in: str = "") -> None:
    """Refuse a local model folder whose only weights are pickles, before transformers reads them."""
    pickled = _pickled_files(folder)
    if allow_pickle or not pickled or any(folder.glob("*.safetensors")):
        return  # no pickles, or safetensors that transformers prefers; missing weights it reports
    raise DebatelabError(
        f"{what} {folder} has only pickled weights ({', '.join(pickled)}), which can run code when loaded; "
        f"{opt_in or 'use safetensors weights, or if you trust the files set ' + PICKLE_OPT_IN}"
    )


def check_adapter_weights(adapter: Path, allow_pickle: bool, opt_in: str = "") -> None:
    """Refuse an adapter folder without adapter_model.safetensors: PEFT would unpickle the .bin."""
    if allow_pickle or (adapter / "adapter_model.safetensors").is_file():
        return
    found = ", ".join(_pickled_files(adapter)) or "no weights"
    raise DebatelabError(
        f"adapter {adapter} has no adapter_model.safetensors ({found}); pickled weights can run code when "
        f"loaded: {opt_in or 'use safetensors, or if you trust the files set ' + PICKLE_OPT_IN}"
    )

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_TYPES = ("LORA",)  # what debatelab trains and what vLLM serves
_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def check_adapter_config(adapter: Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a LoRA adapter folder; anything else (no folder, no
    file, not JSON, not a JSON object, another or no ``peft_type``) is one :class:`DebatelabError`
    line, before PEFT or vLLM would fail with a traceback of their own."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise DebatelabError(f"adapter folder not found: {adapter}")
    path = adapter / ADAPTER_CONFIG
    if not path.is_file():
        raise DebatelabError(f"not a PEFT adapter folder (no {ADAPTER_CONFIG}): {adapter}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DebatelabError(f"cannot read {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    except json.JSONDecodeError as exc:
        raise DebatelabError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise DebatelabError(f"{path} must be a JSON object, not a JSON {_JSON_NAMES.get(type(config), 'value')}")
    kind = config.get("peft_type")
    if kind not in ADAPTER_TYPES:
        raise DebatelabError(f"{path} has peft_type {kind!r}; only LoRA adapters (peft_type 'LORA') are supported")
    return config


def dir_fingerprint(path: Path) -> str:
    """Content marker for a local model dir: config text plus size, head and tail of each weight file
    (reading whole multi-GB files on every start would be too slow; mtimes change on a plain copy).
    The weight files are the safetensors, or, in a folder without any, the pickles that only
    ``allow_pickle`` loads (so folders that load safetensors keep their fingerprints)."""
    import hashlib

    h = hashlib.sha256()
    weights = sorted(path.glob("*.safetensors")) or [path / name for name in _pickled_files(path)]
    for f in sorted(path.glob("*.json")) + weights:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 16))
            fh.seek(max(0, size - (1 << 16)))
            h.update(fh.read())
    return h.hexdigest()[:16]
