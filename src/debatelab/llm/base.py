"""The one batched model interface every backend implements.

Both calls take a whole list of requests so the engine can hand a backend an entire wave of
debate turns (or survey questions) at once; backends decide how to batch or parallelise them.

Capabilities beyond the three abstract methods (usage counters, closing, adapter views on one
loaded model, mixed-adapter calls, prompt-prefix cache statistics) are methods with defaults on
:class:`LLM`, so callers never probe a backend with ``hasattr`` and wrappers
(:mod:`.wrappers`) pass them through by construction.
"""

from __future__ import annotations

import abc
import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Literal, Sequence

MessageRole = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: MessageRole
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Prompt:
    """What the model sees: chat ``messages`` or a raw ``text`` prompt (exactly one of them).

    ``assistant_prefix`` is text the answer must start with; chat backends that can prefill the
    assistant turn continue from it, raw-prompt backends append it to the text.
    """

    messages: tuple[Message, ...] = ()
    text: str | None = None
    assistant_prefix: str = ""

    def __post_init__(self) -> None:
        if bool(self.messages) == (self.text is not None):
            raise ValueError("a Prompt needs exactly one of messages or text")

    def flat_text(self) -> str:
        """A plain-text rendering for backends without a chat template."""
        if self.text is not None:
            return self.text + self.assistant_prefix
        body = "\n\n".join(m.content for m in self.messages)
        return f"{body}\n\n{self.assistant_prefix}" if self.assistant_prefix else body


Purpose = Literal["generate", "score"]


@dataclass(frozen=True)
class Conditioning:
    """What a backend makes of one :class:`Prompt`: the text the model conditions on.

    ``exact`` is True when ``text`` is exactly what the model reads (a chat template rendered by
    debatelab, or a raw prompt); False when a server renders it from the chat messages, in which
    case ``text`` is the canonical JSON of the request's messages, so its hash still identifies
    the request but not the tokens. ``how`` says it in one line, for run summaries and reports.
    """

    text: str
    exact: bool
    how: str

    def sha(self) -> str:
        return prompt_sha(self.text)


def prompt_sha(*texts: str) -> str:
    """A short SHA-256 of the distinct ``texts`` in order (one text: the hash of that text), the
    hash stored with every turn and survey so two runs can be checked for prompt identity."""
    distinct = list(dict.fromkeys(texts))
    return hashlib.sha256("\x00".join(distinct).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class GenerateRequest:
    prompt: Prompt
    temperature: float = 1.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_p: float = 1.0
    contrast: Prompt | None = None
    """The prompt without the agent's persona, for a backend view with persona-contrastive
    decoding (:class:`Intervention`); every other backend ignores it."""
    group: str | None = None
    """The unit of work the request belongs to (the runner's debate id): :meth:`LLM.release`
    names groups whose prompts no later request extends."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    error: str | None = None
    """Set (and ``text`` empty) when this one request failed for good after the backend's retries;
    the engine then fails only the debate it belongs to, visibly and resumably."""


@dataclass(frozen=True)
class ScoreRequest:
    """Ask for the log-probability of each fixed continuation in ``options`` after ``prompt``."""

    prompt: Prompt
    options: tuple[str, ...]
    seed: int | None = None
    contrast: Prompt | None = None
    """As :attr:`GenerateRequest.contrast`: options are then scored under the contrastive distribution."""
    group: str | None = None
    """As :attr:`GenerateRequest.group`."""


@dataclass(frozen=True)
class OptionScores:
    """Log-probabilities aligned with the request's options (``-inf`` where the model gave none).

    ``source`` says how they were obtained:

    - ``"logprobs"``: true model log-probabilities, complete (every option scored: exactly, or
      every option was among the API's top alternatives);
    - ``"top_k"``: true model log-probabilities, but only for the options among the API's top-k
      alternatives (e.g. legacy completions' top 5 of 11); the rest are ``-inf``, i.e. probability
      0 once renormalised, so the distribution is partial and its mass a lower bound;
    - ``"generated"``: the backend offered none, so one greedy answer was parsed; the chosen
      option gets log-probability 0 and the rest ``-inf``. ``text`` keeps that raw answer.
    """

    logprobs: tuple[float, ...]
    source: Literal["logprobs", "top_k", "generated"] = "logprobs"
    text: str | None = None
    error: str | None = None
    """As :attr:`Completion.error`: this request failed for good; ``logprobs`` is then empty."""


@dataclass(frozen=True)
class Steer:
    """Activation steering: ``scale`` times the mean output of decoder layer ``layer`` (at the
    last token) over ``persona_prompts`` minus that over ``default_prompts``, added to that
    layer's output at every position."""

    layer: int
    scale: float
    persona_prompts: tuple[Prompt, ...]
    default_prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class Intervention:
    """What a backend view computes beyond plain decoding (see :mod:`debatelab.methods`)."""

    contrast: float | None = None
    """λ of persona-contrastive decoding for requests that carry a ``contrast`` prompt; None: off."""
    steer: Steer | None = None


@dataclass
class Usage:
    """Running token counts a backend keeps for progress reporting. A backend that makes network
    requests also keeps :data:`REQUEST_COUNTERS` in ``extra`` (reported per run, see
    :mod:`debatelab.request_counts`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# What went wrong with a remote backend's requests, and how its surveys were scored: retries,
# 429 answers, requests that failed for good, then surveys scored exactly (echo), from the top-k
# alternatives (complete or partial) and from a parsed greedy answer.
REQUEST_COUNTERS = ("retries", "rate_limited", "failed_requests", "survey_exact", "survey_top_k", "survey_fallbacks")


class LLM(abc.ABC):
    """A language model backend. Implementations must be safe to call repeatedly.

    Subclasses implement :meth:`generate`, :meth:`score_options` and :meth:`identity`; every other
    method is a capability with a default that is right for a backend without it.
    """

    usage: Usage | None = None
    """Running token counts for progress reporting; backends set their own instance (None: none kept)."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        """One completion per request, in order."""

    @abc.abstractmethod
    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        """One set of option log-probabilities per request, in order."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything that makes this backend's outputs differ from another's (model, revision,
        adapter, base URL, dtype...). Used in debate ids so two models never share results."""

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        """The text the model conditions on for ``prompt`` when asked to generate or to score
        options; the default is a backend that reads the flat text (no chat template)."""
        return Conditioning(prompt.flat_text(), True, "flat text, no chat template; the assistant prefix appended")

    def close(self) -> None:
        """Release what the backend holds (connections, engines); the default holds nothing."""

    def with_adapter(self, adapter: str | None) -> LLM | None:
        """A view on the SAME loaded model that serves ``adapter`` (None: the base model), or None
        when this backend cannot switch adapters and the caller must load a separate backend."""
        return None

    def with_intervention(self, intervention: Intervention) -> LLM | None:
        """A view on the same loaded model that applies ``intervention`` (its identity says so),
        or None when this backend cannot (only the transformers backends can)."""
        return None

    def shares_engine(self, other: LLM) -> bool:
        """Whether ``other`` runs on the same loaded engine, so their requests can go out as one
        :meth:`generate_mixed` call; by default a backend shares with nothing."""
        return False

    def generate_mixed(self, parts: Sequence[tuple[LLM, Sequence[GenerateRequest]]]) -> list[list[Completion]]:
        """The requests of several views (``shares_engine`` with this one), answered per part and
        in order. The default asks each view on its own; an engine serving adapters per request
        overrides it to send every part in one call."""
        return [view.generate(requests) for view, requests in parts]

    def score_options_mixed(self, parts: Sequence[tuple[LLM, Sequence[ScoreRequest]]]) -> list[list[OptionScores]]:
        """As :meth:`generate_mixed`, for option scoring."""
        return [view.score_options(requests) for view, requests in parts]

    def cache_stats(self) -> dict[str, float] | None:
        """Cumulative prompt-prefix cache statistics (``CacheStats.as_dict()``), or None when the
        backend keeps no such cache (or it is off)."""
        return None

    def clear_cache(self) -> None:
        """Drop every prompt-prefix cache entry (statistics stay); the default has none to drop."""

    def release(self, groups: Sequence[str]) -> None:
        """Groups (finished debates) no later request belongs to: a backend with a prompt-prefix
        cache may drop what their requests left there now, instead of holding it until it is
        full. Results do not change; the default keeps nothing to drop."""

    def without_cache(self) -> ContextManager[None]:
        """A context in which calls compute every prompt in full, the cache restored after it."""
        return nullcontext()
