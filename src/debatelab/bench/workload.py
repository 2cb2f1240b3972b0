"""The fixed bench workload: a persona bank, an experiment config, and thin model wrappers.

Both modes run the real engine (:func:`debatelab.experiment.run_experiment`) on the same model
object; only the wrapper around it differs. Seeds are per request, so both produce the same debates.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import ExperimentConfig
from ..llm.base import LLM, Completion, GenerateRequest, OptionScores, ScoreRequest
from ..llm.options import BackendOptions
from ..llm.wrappers import Wrapper
from ..personas import save_bank
from ..types import Persona
from .roofline import Tracer, traced_mixed

ROSTER = ("republican", "democrat", "default")
TOPIC = "climate_change"


@dataclass(frozen=True)
class BenchSettings:
    """One workload: ``debates`` debates all in flight, 3 agents, ``rounds`` round-robin cycles."""

    model: str = "embedded"
    debates: int = 40
    one_at_a_time_debates: int = 5
    """How many of those debates the one-at-a-time mode runs (the first ones, identical to the
    wave run's): its requests go one by one, so its rates do not depend on how many it runs."""
    rounds: int = 3
    """Round-robin cycles, as in the paper (more rounds: longer prompts, more of them reused)."""
    max_tokens: int = 32
    """Longest reply in tokens."""
    temperature: float = 0.7
    survey_prompts: int = 24
    """Survey prompts (taken from the wave run) for the generate-vs-logprobs comparison; 0 skips it."""
    survey_max_tokens: int = 8
    compare_dtype: str | None = None
    """Also load the model in this dtype and compare its survey distributions on the same prompts."""
    seed: int = 0
    backend: BackendOptions = field(default_factory=BackendOptions)


def write_bank(path: Path, per_party: int) -> Path:
    """Deterministic personas of about 90 words each (the paper's stories are about 120)."""
    views = {"republican": "lower taxes, a strong border and less regulation of business",
             "democrat": "climate action, public health care and voting rights"}
    personas = []
    for party, view in views.items():
        for i in range(per_party):
            name = f"{party[:3].title()}{i}"
            story = (f"You are {name}, a {party} from a mid-sized town in Ohio, where you have lived for "
                     f"{20 + i % 30} years. You work as a {['nurse', 'teacher', 'farmer', 'mechanic'][i % 4]} and "
                     f"care deeply about your family, your church and your neighbours. You believe in {view}, "
                     "and you say so at the dinner table and at town meetings. You read the local paper every "
                     "morning, distrust people who speak in slogans, and change your mind only when someone "
                     "gives you a concrete reason grounded in the lives of people you know.")
            personas.append(Persona(id=f"{party[0]}{i:03d}", party=party, name=name, background=story))
    save_bank(personas, path)
    return path


def bench_config(settings: BenchSettings, bank: Path, debates: int) -> ExperimentConfig:
    """The first ``debates`` repetitions of the workload; every run's debate ``r`` is the same debate."""
    return ExperimentConfig(
        name="bench", model=settings.model, backend=settings.backend, topics=[TOPIC], agents=list(ROSTER),
        rounds=settings.rounds, repetitions=debates, seed=settings.seed, personas=bank,
        reply={"temperature": settings.temperature, "max_tokens": settings.max_tokens},
        survey={"method": "logprobs", "max_tokens": settings.survey_max_tokens},
        max_in_flight=settings.debates, admission="together",  # the wave mode: every debate in one wave
    )


class OneAtATime(Wrapper):
    """Sends every request alone and computes every prompt in full, as peer tools and the
    paper's scripts call a model (no prompt-prefix reuse between calls). ``tracer`` (None: off)
    replays the calls into the roofline's needed work."""

    def __init__(self, inner: LLM, tracer: Tracer | None = None):
        super().__init__(inner)
        self.tracer = tracer

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        with self.inner.without_cache():
            out = [self.inner.generate([r])[0] for r in requests]
        if self.tracer is not None:
            self.tracer.generate(requests, out, self.inner)
        return out

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        with self.inner.without_cache():
            out = [self.inner.score_options([r])[0] for r in requests]
        if self.tracer is not None:
            self.tracer.score(requests, out, self.inner)
        return out


class TracedWrapper(Wrapper):
    """Forwards calls unchanged; ``tracer`` (None: off) replays each call into the roofline's
    needed work (the tracer itself skips the views' calls inside a mixed call)."""

    def __init__(self, inner: LLM, tracer: Tracer | None = None):
        super().__init__(inner)
        self.tracer = tracer

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        out = self.inner.generate(requests)
        if self.tracer is not None:
            self.tracer.generate(requests, out, self.inner)
        return out

    def generate_mixed(self, parts: Sequence[tuple[LLM, Sequence[GenerateRequest]]]) -> list[list[Completion]]:
        # Overridden with generate, or a mixed call would bypass this layer (keeps_mixed_calls).
        return traced_mixed(self.tracer, parts, lambda: super(TracedWrapper, self).generate_mixed(parts), "generate")

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        out = self.inner.score_options(requests)
        if self.tracer is not None:
            self.tracer.score(requests, out, self.inner)
        return out

    def score_options_mixed(self, parts: Sequence[tuple[LLM, Sequence[ScoreRequest]]]) -> list[list[OptionScores]]:
        return traced_mixed(self.tracer, parts, lambda: super(TracedWrapper, self).score_options_mixed(parts), "score")


class Recorder(TracedWrapper):
    """Forwards whole waves unchanged and keeps the survey (scoring) requests it saw; ``tracer``
    (None: off) replays every call into the roofline's needed work."""

    def __init__(self, inner: LLM, tracer: Tracer | None = None):
        super().__init__(inner, tracer)
        self.score_requests: list[ScoreRequest] = []

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        self.score_requests.extend(requests)
        return super().score_options(requests)

    def score_options_mixed(self, parts: Sequence[tuple[LLM, Sequence[ScoreRequest]]]) -> list[list[OptionScores]]:
        for _, requests in parts:
            self.score_requests.extend(requests)
        return super().score_options_mixed(parts)


class PeakRss:
    """Samples the resident set size (``/proc/self/statm``) in a thread; ``peak`` is in bytes."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, current_rss())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRss":
        self.peak = current_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())


def current_rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no procfs (macOS): the process's high-water mark instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
