"""Backend options: one pydantic model shared by every backend (each reads the fields it needs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BackendOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- transformers backends (embedded, hf:) ---
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights/compute dtype. ``auto`` = float32 on CPU, bfloat16 on CUDA."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs. ``auto`` picks CUDA when available."""
    batch_size: int = Field(32, ge=1)
    """Most sequences in one forward pass; a wave larger than this is split into micro-batches."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads on CPU (None = torch's default)."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """bitsandbytes quantisation; needs CUDA."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for ``hf:`` models."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust its author."""
    allow_pickle: bool = False
    """Accept pickled weights (``*.bin``/``*.pt``), which can run arbitrary code when loaded. Off:
    only safetensors are loaded, for the model and for adapters."""
    prefix_cache_mb: int | None = Field(None, ge=0)
    """Memory for reusing prompt keys/values across calls (each agent's next prompt repeats its
    last one's background, topic and history); 0 turns it off, None (default) takes a third of
    the memory available once the model is loaded (RAM on CPU, free GPU memory on CUDA). Results
    are the same either way up to float rounding. Models with sliding-window or linear-attention
    layers never use it."""
    adapter: str | None = None
    """A PEFT (LoRA) adapter folder applied on top of the model, e.g. from ``debatelab finetune``."""

    # --- OpenAI-compatible backend (openai:) ---
    base_url: str | None = None
    """Server URL, e.g. ``http://127.0.0.1:8000/v1``; falls back to $OPENAI_BASE_URL, then OpenAI."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (keys never go in config files)."""
    api_key_file: str | None = None
    """A file holding the API key, used when the variable is unset; it must not be readable by
    group or others (``chmod 600``)."""
    api: Literal["chat", "completions"] = "chat"
    """Chat completions, or legacy text completions (e.g. gpt-3.5-turbo-instruct, as in the paper)."""
    concurrency: int = Field(8, ge=1)
    """Most requests in flight at once."""
    timeout: float = Field(60.0, gt=0)
    """Seconds before one HTTP request is abandoned (and retried)."""
    max_retries: int = Field(4, ge=0)
    """Retries per request (with jittered exponential back-off honouring Retry-After)."""
    retry_budget: float = Field(300.0, gt=0)
    """Most seconds one request may spend on all its attempts and waits; then it fails, and with
    it only its debate (recorded, and retried on resume)."""
    retry_backoff: float = Field(1.0, gt=0)
    """First back-off wait in seconds; it doubles per retry (with jitter), unless Retry-After says more."""
    top_logprobs: int = Field(20, ge=0, le=20)
    """Alternatives requested per token for option scoring; 0 disables logprob scoring."""
