"""Run debates across a Ray cluster: shards of debates on workers, one SQLite writer here.

:class:`RayExecutor` implements :class:`debatelab.executor.Executor`. Each worker (a Ray actor)
loads its own backend and runs its shard with the ordinary :class:`~debatelab.runner.WaveRunner`
on a sink that only knows the progress it was sent; an actor-method generator streams every
:class:`~debatelab.runner.Wave` back. This process commits each wave to the run's store as it
arrives, then yields it, so the database, resume and exports behave exactly as in a local run: a
worker's wave that never reached the driver is simply redone on resume.

Persona generation and the identity check go through :class:`WorkerLLM`, an LLM whose calls are
answered by worker 0, so no model is loaded in this process.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

from .config import ExperimentConfig
from .errors import DebatelabError, RunFailed
from .llm.base import LLM, Completion, Conditioning, GenerateRequest, OptionScores, Prompt, Purpose, ScoreRequest, Usage
from .llm.registry import load_llm
from .runner import ResultSink, Wave, WaveRunner
from .seats import load_seat_llms, seat_adapters
from .types import DebateSpec, SurveyAnswer, Turn

Progress = dict[str, tuple[list[Turn], set[tuple[int, int]]]]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DebatelabError("executor 'ray' needs Ray: pip install 'debatelab[ray]'") from None
    return ray


class _ShardSink:
    """The ResultSink of a worker: knows the committed progress it was sent; commits nothing (the
    worker yields each wave to the driver, which commits it)."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def status(self, debate_id: str) -> str:
        return "pending"  # the driver sends unfinished debates only

    def progress(self, debate_id: str) -> tuple[list[Turn], set[tuple[int, int]]]:
        return self._progress.pop(debate_id, ([], set()))

    def mark_running(self, debate_ids: Iterable[str]) -> None:
        pass  # the driver marks its shards running when it sends them

    def add_results(self, turns: list[tuple[str, Turn]], surveys: list[tuple[str, SurveyAnswer]],
                    finished: list[str], failed: Iterable[tuple[str, int, str]] = ()) -> None:
        pass  # the runner yields this very wave, and the worker streams it to the driver


class DebateWorker:
    """Body of the Ray actor (made remote lazily, so this module imports without Ray)."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.llm = load_llm(config.model, config.backend, adapters=seat_adapters(config))
        self.seats = load_seat_llms(config, self.llm)

    def identities(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        return self.llm.identity(), {key: llm.identity() for key, llm in self.seats.items()}

    def conditioning(self, key: str, prompt: Prompt, purpose: Purpose) -> Conditioning:
        """What model ``key`` ("" = the experiment's) conditions on: only a worker holds the backend."""
        return (self.seats[key] if key else self.llm).conditioning(prompt, purpose)

    def generate(self, requests: list[GenerateRequest]) -> list[Completion]:
        return self.llm.generate(requests)

    def score_options(self, requests: list[ScoreRequest]) -> list[OptionScores]:
        return self.llm.score_options(requests)

    def run(self, specs: list[DebateSpec], progress: Progress) -> Iterator[Wave]:
        yield from WaveRunner(self.llm, _ShardSink(progress), self.config, seat_llms=self.seats).waves(specs)


class WorkerLLM(LLM):
    """Worker 0 seen from the driver as the experiment's LLM (persona generation, identity).
    ``usage`` counts the completion tokens of the waves the driver received, for progress."""

    def __init__(self, ray: Any, worker: Any, identity: dict[str, Any]):
        self._ray, self._worker, self._identity = ray, worker, identity
        self.usage: Usage = Usage()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        return self._ray.get(self._worker.conditioning.remote("", prompt, purpose))

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        return self._ray.get(self._worker.generate.remote(list(requests)))

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        return self._ray.get(self._worker.score_options.remote(list(requests)))


class _SeatIdentity(LLM):
    """Stands in for a per-agent backend on the driver: only its identity and its conditioning
    (asked of worker 0, for the run summary) are needed here."""

    def __init__(self, identity: dict[str, Any], ray: Any, worker: Any, key: str):
        self._identity, self._ray, self._worker, self._key = identity, ray, worker, key

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        return self._ray.get(self._worker.conditioning.remote(self._key, prompt, purpose))

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        raise RuntimeError("a per-agent model of a Ray run is served on the workers, not the driver")

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        raise RuntimeError("a per-agent model of a Ray run is served on the workers, not the driver")


class RayExecutor:
    """Ray workers for one run (``config.executor``); this process is the run's only writer."""

    def __init__(self, config: ExperimentConfig):
        ray = self._ray = _import_ray()
        ex = config.executor
        if not ray.is_initialized():
            ray.init(address=ex.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        actor = ray.remote(num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker)(DebateWorker)
        self.workers = [actor.remote(config) for _ in range(ex.workers)]
        try:
            identity, seats = ray.get(self.workers[0].identities.remote())
        except ray.exceptions.RayError as exc:
            self.close()
            raise RunFailed(f"Ray workers failed to start: {_last_line(exc)}") from None
        except BaseException:  # a stop signal while the workers load: none may outlive the run
            self.close()
            raise
        self.llm = WorkerLLM(ray, self.workers[0], identity)
        self.seats: dict[str, LLM] = {key: _SeatIdentity(ident, ray, self.workers[0], key)
                                      for key, ident in seats.items()}

    def run(self, specs: Sequence[DebateSpec], store: ResultSink) -> Iterator[Wave]:
        """Send the unfinished debates of ``specs`` to the workers with their committed progress;
        commit every wave that comes back, as it arrives, and yield it."""
        pending = [s for s in specs if store.status(s.debate_id) != "complete"]
        progress = {s.debate_id: store.progress(s.debate_id) for s in pending}
        store.mark_running(s.debate_id for s in pending)
        for wave in self._stream(pending, progress):
            store.add_results(wave.turns, wave.surveys, wave.finished, wave.failed)
            self.llm.usage.completion_tokens += sum(t.completion_tokens for _, t in wave.turns)
            yield wave

    def _stream(self, specs: Sequence[DebateSpec], progress: Progress) -> Iterator[Wave]:
        """Shard ``specs`` round-robin over the workers and yield every wave as it arrives."""
        shards = [list(specs[i::len(self.workers)]) for i in range(len(self.workers))]
        inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        streams = [w.run.options(num_returns="streaming").remote(shard, {s.debate_id: progress[s.debate_id]
                                                                         for s in shard if s.debate_id in progress})
                   for w, shard in zip(self.workers, shards) if shard]
        for stream in streams:
            threading.Thread(target=self._pump, args=(stream, inbox), daemon=True).start()
        running = len(streams)
        while running:
            kind, item = inbox.get()
            if kind == "wave":
                yield item
            elif kind == "error":
                raise RunFailed(f"a Ray worker failed: {item}")
            else:
                running -= 1

    def _pump(self, stream: Any, inbox: queue.Queue[tuple[str, Any]]) -> None:
        try:
            for ref in stream:
                inbox.put(("wave", self._ray.get(ref)))
        except Exception as exc:  # surfaced in the driver's thread, which owns the store
            inbox.put(("error", _last_line(exc)))
        inbox.put(("done", None))

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_line(exc: BaseException) -> str:
    """The LAST line of an error's message: Ray wraps a worker's error in its traceback and puts
    the real cause last (:func:`debatelab.errors.first_line` would give Ray's header)."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
