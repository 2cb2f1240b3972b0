"""Cross-cutting behaviour as models that wrap a model (Concordia's retry and call-limit wrappers).

:class:`Wrapper` forwards every method of :class:`~.base.LLM` to ``inner``, capabilities included,
so a subclass overrides only what it changes and never drops what the backend can do (usage
counters, adapter views, one mixed call per engine, cache control, closing).
"""

from __future__ import annotations

import copy
from typing import Any, ContextManager, Sequence

from .base import LLM, Completion, Conditioning, GenerateRequest, Intervention, OptionScores, Prompt, Purpose, ScoreRequest, Usage


def keeps_mixed_calls(llm: LLM) -> bool:
    """Whether every wrapper layer of ``llm`` lets a mixed call go to the engine unchanged: a
    layer that overrides ``generate`` or ``score_options`` (to count, record, send one at a
    time) without overriding the matching mixed call would be bypassed by one."""
    while isinstance(llm, Wrapper):
        kind = type(llm)
        for single, mixed in (("generate", "generate_mixed"), ("score_options", "score_options_mixed")):
            if getattr(kind, single) is not getattr(Wrapper, single) and getattr(kind, mixed) is getattr(Wrapper, mixed):
                return False
        llm = llm.inner
    return True


def engine_peer(other: LLM) -> LLM | None:
    """The backend under ``other`` for a :meth:`~.base.LLM.shares_engine` test: None when a
    wrapper layer of it would be bypassed by a mixed call (see :func:`keeps_mixed_calls`)."""
    return unwrap(other) if keeps_mixed_calls(other) else None


def unwrap(llm: LLM) -> LLM:
    """The backend under every layer of wrappers (``llm`` itself when it is not a wrapper)."""
    while isinstance(llm, Wrapper):
        llm = llm.inner
    return llm


class Wrapper(LLM):
    """An :class:`LLM` that is ``inner`` unless a subclass says otherwise."""

    def __init__(self, inner: LLM):
        self.inner = inner

    @property  # type: ignore[override]  # the base's class attribute, read through to the backend
    def usage(self) -> Usage | None:
        """The wrapped backend's counters: a wrapper counts nothing of its own."""
        return self.inner.usage

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        return self.inner.generate(requests)

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        return self.inner.score_options(requests)

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        return self.inner.conditioning(prompt, purpose)

    def close(self) -> None:
        self.inner.close()

    def with_adapter(self, adapter: str | None) -> LLM | None:
        """The backend's view for ``adapter``, wrapped like this one (None where it has none)."""
        view = self.inner.with_adapter(adapter)
        return None if view is None else self.rewrap(view)

    def with_intervention(self, intervention: Intervention) -> LLM | None:
        view = self.inner.with_intervention(intervention)
        return None if view is None else self.rewrap(view)

    def rewrap(self, inner: LLM) -> Wrapper:
        """This wrapper around another backend: a shallow copy, so state such as a recorder's
        list is shared with the original (a cache must then key by ``identity()``, which differs
        per adapter). Override where a view needs state of its own."""
        twin = copy.copy(self)
        twin.inner = inner
        return twin

    def shares_engine(self, other: LLM) -> bool:
        """As the backend's, unless a layer on either side would be bypassed by a mixed call."""
        return keeps_mixed_calls(self) and keeps_mixed_calls(other) and self.inner.shares_engine(unwrap(other))

    def generate_mixed(self, parts: Sequence[tuple[LLM, Sequence[GenerateRequest]]]) -> list[list[Completion]]:
        if not all(keeps_mixed_calls(view) for view in (self, *(v for v, _ in parts))):
            return super().generate_mixed(parts)  # each view's own generate, its layers included
        return self.inner.generate_mixed([(unwrap(view), requests) for view, requests in parts])

    def score_options_mixed(self, parts: Sequence[tuple[LLM, Sequence[ScoreRequest]]]) -> list[list[OptionScores]]:
        if not all(keeps_mixed_calls(view) for view in (self, *(v for v, _ in parts))):
            return super().score_options_mixed(parts)
        return self.inner.score_options_mixed([(unwrap(view), requests) for view, requests in parts])

    def cache_stats(self) -> dict[str, float] | None:
        return self.inner.cache_stats()

    def clear_cache(self) -> None:
        self.inner.clear_cache()

    def release(self, groups: Sequence[str]) -> None:
        self.inner.release(groups)

    def without_cache(self) -> ContextManager[None]:
        return self.inner.without_cache()
