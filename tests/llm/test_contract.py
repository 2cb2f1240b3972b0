"""The backend contract (issue 12): every backend is an :class:`LLM` with the capability defaults,
and a :class:`Wrapper` passes every capability through, adapter views and mixed calls included."""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from debatelab.llm.base import LLM, Completion, GenerateRequest, OptionScores, Prompt, ScoreRequest, Usage
from debatelab.llm.registry import _BACKENDS
from debatelab.llm.scripted import ScriptedLLM
from debatelab.llm.wrappers import engine_peer, Wrapper, unwrap

# The class each registered factory returns (``embedded`` is a transformers model like ``hf:``).
BACKEND_CLASSES = {"embedded": "debatelab.llm.hf:HFLLM", "hf": "debatelab.llm.hf:HFLLM",
                   "openai": "debatelab.llm.openai_compat:OpenAICompatLLM",
                   "opinion-sim": "debatelab.llm.opinion_sim:OpinionSimLLM",
                   "scripted": "debatelab.llm.scripted:ScriptedLLM", "vllm": "debatelab.llm.vllm_backend:VLLMLLM"}
CAPABILITIES = ("close", "with_adapter", "shares_engine", "generate_mixed", "score_options_mixed", "cache_stats",
                "clear_cache", "without_cache")

REQ = GenerateRequest(Prompt(text="Hello"), seed=1)
SCORE = ScoreRequest(Prompt(text="Rate: "), ("0", "1", "2"))


def _class(path: str) -> type:
    module, _, name = path.partition(":")
    if module in ("debatelab.llm.hf",):
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    return getattr(importlib.import_module(module), name)


def test_every_registered_backend_is_an_llm_subclass():
    assert set(BACKEND_CLASSES) == set(_BACKENDS)
    for kind, path in BACKEND_CLASSES.items():
        cls = _class(path)
        assert issubclass(cls, LLM) and not cls.__abstractmethods__, kind
        assert all(callable(getattr(cls, c)) for c in CAPABILITIES), kind


def test_the_base_is_abstract_and_its_defaults_mean_no_capability():
    class Half(LLM):
        def generate(self, requests):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Half()  # type: ignore[abstract]
    llm, other = ScriptedLLM("a"), ScriptedLLM("b")
    assert isinstance(llm.usage, Usage) and LLM.usage is None
    assert llm.with_adapter("some/adapter") is None and not llm.shares_engine(other) and not llm.shares_engine(llm)
    assert llm.cache_stats() is None and llm.close() is None and llm.clear_cache() is None
    with llm.without_cache():
        pass
    gen = llm.generate_mixed([(llm, [REQ]), (other, [REQ, REQ])])
    assert [len(part) for part in gen] == [1, 2] and len(llm.generate_calls) == len(other.generate_calls) == 1
    assert [len(p) for p in llm.score_options_mixed([(other, [SCORE]), (llm, [])])] == [1, 0]


class _Engine:
    def __init__(self) -> None:
        self.calls: list[list[tuple[str | None, str]]] = []  # per call: (adapter, prompt text) per request
        self.closed = False


class _View(LLM):
    """A fake engine-backed backend: views per adapter, one engine call per mixed call, a cache."""

    def __init__(self, engine: _Engine, adapter: str | None = None):
        self.engine, self.adapter = engine, adapter
        self.usage = Usage()
        self.cache_on, self.cleared = True, 0

    def identity(self) -> dict[str, Any]:
        return {"backend": "fake", "adapter": self.adapter}

    def _run(self, pairs: list[tuple[str | None, Any]]) -> list[str]:
        self.engine.calls.append([(a, r.prompt.text) for a, r in pairs])
        self.usage.calls += 1
        return [f"{a}:{r.prompt.text}" for a, r in pairs]

    def generate(self, requests):
        return [Completion(t) for t in self._run([(self.adapter, r) for r in requests])]

    def score_options(self, requests):
        return [OptionScores((0.0,), text=t) for t in self._run([(self.adapter, r) for r in requests])]

    def with_adapter(self, adapter):
        return _View(self.engine, adapter)

    def shares_engine(self, other):
        peer = engine_peer(other)
        return isinstance(peer, _View) and peer.engine is self.engine

    def generate_mixed(self, parts):
        assert all(isinstance(v, _View) for v, _ in parts), "wrappers unwrap views before the backend sees them"
        texts = iter(self._run([(v.adapter, r) for v, reqs in parts for r in reqs]))
        return [[Completion(next(texts)) for _ in reqs] for _, reqs in parts]

    def cache_stats(self):
        return {"lookups": 3.0} if self.cache_on else None

    def clear_cache(self):
        self.cleared += 1

    @contextmanager
    def without_cache(self) -> Iterator[None]:
        self.cache_on = False
        try:
            yield
        finally:
            self.cache_on = True

    def close(self):
        self.engine.closed = True


class _Counting(Wrapper):
    """A wrapper that changes one thing (counts generate calls) and inherits everything else."""

    def __init__(self, inner: LLM):
        super().__init__(inner)
        self.generated = [0]  # a list: shared with the views rewrap makes

    def generate(self, requests):
        self.generated[0] += 1
        return super().generate(requests)


def test_a_wrapper_passes_every_capability_through():
    base = _View(_Engine())
    wrapped = _Counting(_Counting(base))
    assert wrapped.usage is base.usage and wrapped.identity() == base.identity() and unwrap(wrapped) is base
    assert wrapped.cache_stats() == {"lookups": 3.0}
    with wrapped.without_cache():
        assert base.cache_stats() is None
    assert base.cache_stats() is not None
    wrapped.clear_cache()
    wrapped.close()
    assert base.cleared == 1 and base.engine.closed
    assert wrapped.generate([REQ])[0].text == "None:Hello" and wrapped.generated == [1]
    assert wrapped.score_options([SCORE])[0].text == "None:Rate: "
    assert _Counting(ScriptedLLM()).with_adapter("a") is None  # no view: the caller loads a backend


class _Plain(Wrapper):
    """A wrapper that changes nothing a call does."""


def test_wrapped_adapter_views_share_the_engine_and_make_one_mixed_call():
    base = _View(_Engine())
    wrapped = _Plain(base)
    red = wrapped.with_adapter("red")
    assert isinstance(red, _Plain) and isinstance(red.inner, _View) and red.inner.adapter == "red"
    assert red.usage is not base.usage  # the view's own counters
    assert wrapped.shares_engine(red) and red.shares_engine(wrapped) and base.shares_engine(red)
    assert not wrapped.shares_engine(_View(_Engine())) and not wrapped.shares_engine(ScriptedLLM())
    assert red.generate([REQ])[0].text == "red:Hello"
    r1, r2 = GenerateRequest(Prompt(text="one")), GenerateRequest(Prompt(text="two"))
    parts = wrapped.generate_mixed([(wrapped, [r1]), (red, [r1, r2])])
    assert [[c.text for c in p] for p in parts] == [["None:one"], ["red:one", "red:two"]]
    assert base.engine.calls[-1] == [(None, "one"), ("red", "one"), ("red", "two")]  # ONE engine call
    assert len(base.engine.calls) == 2


def test_a_wrapper_that_changes_calls_is_never_bypassed_by_a_mixed_one():
    base = _View(_Engine())
    counting = _Counting(base)
    red = counting.with_adapter("red")
    assert isinstance(red, _Counting) and red.generated is counting.generated
    # Merged into one engine call, its generate would not run: so it shares no engine.
    assert not counting.shares_engine(red) and not base.shares_engine(counting) and base.shares_engine(red.inner)
    r1 = GenerateRequest(Prompt(text="one"))
    parts = counting.generate_mixed([(counting, [r1]), (red, [r1])])
    assert [[c.text for c in p] for p in parts] == [["None:one"], ["red:one"]]
    assert counting.generated == [2] and len(base.engine.calls) == 2  # one call per view, each counted
    from debatelab.bench.workload import OneAtATime

    assert not OneAtATime(base).shares_engine(red.inner) and not base.shares_engine(OneAtATime(red.inner))
