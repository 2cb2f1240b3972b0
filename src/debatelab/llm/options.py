"""Backend options: one pydantic model shared by every backend (each reads the fields it needs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..validation import StrictModel

MAX_BATCH = 4_096
MAX_THREADS = 1_024
MAX_PREFIX_CACHE_MB = 2**20  # 1 TiB
MAX_LOGPROBS_CAP = 1_000


class BackendOptions(StrictModel):
    """How a backend loads and calls its model; unknown keys rejected."""

    # --- transformers backends (embedded, hf:) ---
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights/compute dtype. ``auto`` = float32 on CPU, bfloat16 on CUDA."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs. ``auto`` picks CUDA when available."""
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, strict=True)
    """Most sequences in one forward pass; a wave larger than this is split into micro-batches."""
    threads: int | None = Field(None, ge=1, le=MAX_THREADS, strict=True)
    """torch intra-op threads on CPU (None = torch's default)."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """bitsandbytes quantisation; needs CUDA."""
    revision: str | None = Field(None, min_length=1, max_length=256)
    """Hub revision (branch, tag or commit) for ``hf:`` models."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust its author."""
    allow_pickle: bool = False
    """Accept pickled weights (``*.bin``/``*.pt``), which can run arbitrary code when loaded. Off:
    only safetensors are loaded, for the model and for adapters."""
    prefix_cache_mb: int | None = Field(None, ge=0, le=MAX_PREFIX_CACHE_MB, strict=True)
    """Memory for reusing prompt keys/values across calls (each agent's next prompt repeats its
    last one's background, topic and history); 0 turns it off, None (default) takes a third of
    the memory available once the model is loaded (RAM on CPU, free GPU memory on CUDA). Results
    are the same either way up to float rounding. Models with sliding-window or linear-attention
    layers never use it."""
    adapter: str | None = Field(None, min_length=1, max_length=4096)
    """A PEFT (LoRA) adapter folder applied on top of the model, e.g. from ``debatelab finetune``."""

    # --- OpenAI-compatible backend (openai:) ---
    base_url: str | None = Field(None, min_length=1, max_length=2048)
    """Server URL, e.g. ``http://127.0.0.1:8000/v1``; falls back to $OPENAI_BASE_URL, then OpenAI."""
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable that holds the API key (keys never go in config files)."""
    api_key_file: str | None = Field(None, min_length=1, max_length=4096)
    """A file holding the API key, used when the variable is unset; it must not be readable by
    group or others (``chmod 600``)."""
    api: Literal["chat", "completions"] = "chat"
    """Chat completions, or legacy text completions (e.g. gpt-3.5-turbo-instruct, as in the paper)."""
    concurrency: int = Field(8, ge=1, le=1024, strict=True)
    """Most requests in flight at once."""
    timeout: float = Field(60.0, gt=0, le=3600)
    """Seconds before one HTTP request is abandoned (and retried)."""
    max_retries: int = Field(4, ge=0, le=100, strict=True)
    """Retries per request (with jittered exponential back-off honouring Retry-After)."""
    retry_budget: float = Field(300.0, gt=0, le=86_400)
    """Most seconds one request may spend on all its attempts and waits; then it fails, and with
    it only its debate (recorded, and retried on resume)."""
    retry_backoff: float = Field(1.0, gt=0, le=600)
    """First back-off wait in seconds; it doubles per retry (with jitter), unless Retry-After says more."""
    top_logprobs: int | None = Field(None, ge=0, strict=True)
    """Alternatives requested per token for option scoring, within the chosen API's documented cap
    (``TOP_LOGPROBS_CAP``: 20 for chat ``top_logprobs``, 5 for legacy completions ``logprobs``; a
    value over it is a config error). None (default) means the cap; 0 turns log-probability
    scoring off, so every survey is a parsed greedy answer (``source = generated``)."""
    score_echo: bool = True
    """Legacy completions only: score each option exactly, as the log-probability of the prompt
    followed by that option (``echo=True, max_tokens=0``, the prompt and its options in one batched
    request), which also scores options of several tokens (a "10" split into "1" + "0"). vLLM
    supports this; OpenAI's gpt-3.5-turbo-instruct and llama.cpp do not. A server that refuses it
    (or ignores ``echo``) is detected on the first survey, logged once, and the backend scores
    from the first answer token's top log-probabilities instead. False skips the attempt (echo is
    billed as ``len(options) + 1`` prompts per survey)."""

    logprobs_cap: int | None = Field(None, ge=1, le=MAX_LOGPROBS_CAP, strict=True)
    """The most alternatives per token this server returns, for servers that allow more than
    OpenAI's documented caps (vLLM's ``--max-logprobs``, 20 by default; llama.cpp: any). None:
    OpenAI's caps. ``top_logprobs`` may then go up to it, and defaults to it."""
    chat_template: str = Field("auto", min_length=1, max_length=4096)
    """Completions API only: the text the model conditions on. ``auto``: the model's chat template,
    rendered by debatelab and sent as raw text, when ``tokenizer`` is set, so the server sees
    exactly what ``hf:``/``embedded`` render in process; else the flat text. ``none``: always the flat text (a base model, or the
    paper's gpt-3.5-turbo-instruct). Any other value: a Jinja chat-template file, rendered with
    ``tokenizer``'s special tokens."""
    tokenizer: str | None = Field(None, min_length=1, max_length=4096)
    """Completions API only: where the client-side chat template and the end-of-turn token come
    from: ``embedded``, a local tokenizer folder, the ``.gguf`` file the server loads, or a hub id
    (a path is relative to the config file). Byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen)
    give the in-process tokens exactly; see README "What the model conditions on"."""
    chat_prefill: Literal["instruction", "continue"] = "instruction"
    """Chat API only: how the assistant prefix ("Rating: ") reaches the model. ``instruction``
    (works everywhere): the user message asks the answer to begin with it, so the model reads
    another prompt than in process. ``continue``: the prefix is sent as the start of the
    assistant's message, continued by the server (vLLM's ``continue_final_message`` with
    ``add_generation_prompt: false``); a server without that extension answers wrongly or 400."""

    @model_validator(mode="after")
    def _options_of_the_chosen_api(self) -> "BackendOptions":
        if self.api != "completions" and (self.tokenizer is not None or self.chat_template != "auto"):
            raise ValueError("backend.tokenizer and backend.chat_template apply to api: completions only "
                             "(on the chat API the server renders its own template)")
        if self.api != "chat" and self.chat_prefill != "instruction":
            raise ValueError("backend.chat_prefill applies to api: chat only")
        return self

    @model_validator(mode="after")
    def _top_logprobs_within_cap(self) -> "BackendOptions":
        cap = self.logprobs_cap or TOP_LOGPROBS_CAP[self.api]
        if self.top_logprobs is not None and self.top_logprobs > cap:
            raise ValueError(top_logprobs_error(self.top_logprobs, self.api, self.logprobs_cap))
        return self


# What each OpenAI API documents as the most alternatives per token it returns (and OpenAI answers
# 400 above it): chat completions' ``top_logprobs`` and legacy completions' ``logprobs``.
TOP_LOGPROBS_CAP = {"chat": 20, "completions": 5}


def top_logprobs_error(value: int, api: str, server_cap: int | None = None) -> str:
    if server_cap is not None:
        return f"top_logprobs {value} is over backend.logprobs_cap {server_cap}; leave it unset to use the cap"
    name = "top_logprobs" if api == "chat" else "logprobs"
    return (f"top_logprobs {value} is over the {api} API's limit of {TOP_LOGPROBS_CAP[api]} (its {name!r} "
            f"parameter; chat allows 20, legacy completions 5; a server that allows more: set "
            f"backend.logprobs_cap); leave it unset to use the limit")
