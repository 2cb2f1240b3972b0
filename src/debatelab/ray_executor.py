"""Run debates across a Ray cluster: shards of debates on workers, one SQLite writer here.

Each worker (a Ray actor) loads its own backend and runs its shard with the ordinary
:class:`~debatelab.runner.WaveRunner`, but its results go to a buffer that an actor-method
generator streams back, one wave at a time. This process receives the waves and commits each
to the run's store as it arrives, so the database, resume and exports behave exactly as in a
local run: a worker's wave that never reached the driver is simply redone on resume.

Persona generation and the identity check go through :class:`RayPool`, an LLM whose calls are
answered by worker 0, so no model is loaded in this process.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

from .config import ExperimentConfig
from .errors import DebatelabError, RunFailed
from .llm.base import Completion, GenerateRequest, OptionScores, ScoreRequest, Usage
from .types import DebateSpec, SurveyAnswer, Turn

Wave = tuple[list[tuple[str, Turn]], list[tuple[str, SurveyAnswer]], list[str], list[tuple[str, int, str]]]
Progress = dict[str, tuple[list[Turn], set[tuple[int, int]]]]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DebatelabError("executor 'ray' needs Ray: pip install 'debatelab[ray]'") from None
    return ray


class _ShardSink:
    """The ResultSink of a worker: knows the committed progress it was sent, buffers one wave."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self.wave: Wave | None = None

    def status(self, debate_id: str) -> str:
        return "pending"  # the driver sends unfinished debates only

    def progress(self, debate_id: str) -> tuple[list[Turn], set[tuple[int, int]]]:
        return self._progress.pop(debate_id, ([], set()))

    def mark_running(self, debate_ids: Iterable[str]) -> None:
        pass  # the driver marks its shards running when it sends them

    def add_results(self, turns: list[tuple[str, Turn]], surveys: list[tuple[str, SurveyAnswer]],
                    finished: list[str], failed: Iterable[tuple[str, int, str]] = ()) -> None:
        self.wave = (turns, surveys, finished, list(failed))


class DebateWorker:
    """Body of the Ray actor (made remote lazily, so this module imports without Ray)."""

    def __init__(self, config: ExperimentConfig):
        from .experiment import _seat_adapters, load_seat_llms
        from .llm.registry import load_llm

        self.config = config
        self.llm = load_llm(config.model, config.backend, adapters=_seat_adapters(config))
        self.seats = load_seat_llms(config, self.llm)

    def identities(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        return self.llm.identity(), {key: llm.identity() for key, llm in self.seats.items()}

    def generate(self, requests: list[GenerateRequest]) -> list[Completion]:
        return self.llm.generate(requests)

    def score_options(self, requests: list[ScoreRequest]) -> list[OptionScores]:
        return self.llm.score_options(requests)

    def run(self, specs: list[DebateSpec], progress: Progress) -> Iterator[Wave]:
        from .runner import WaveRunner

        sink = _ShardSink(progress)
        runner = WaveRunner(self.llm, sink, self.config, seat_llms=self.seats)
        for _ in runner.waves(specs):
            assert sink.wave is not None
            yield sink.wave


class _SeatIdentity:
    """Stands in for a per-agent backend on the driver: only its identity is needed here."""

    def __init__(self, identity: dict[str, Any]):
        self._identity = identity

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)


class RayPool:
    """Ray workers for one run, seen from the driver as an LLM (answered by worker 0)."""

    def __init__(self, config: ExperimentConfig):
        ray = self._ray = _import_ray()
        ex = config.executor
        if not ray.is_initialized():
            ray.init(address=ex.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        actor = ray.remote(num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker)(DebateWorker)
        self.workers = [actor.remote(config) for _ in range(ex.workers)]
        try:
            self._identity, seats = ray.get(self.workers[0].identities.remote())
        except ray.exceptions.RayError as exc:
            self.close()
            raise RunFailed(f"Ray workers failed to start: {_first_line(exc)}") from None
        self.seats = {key: _SeatIdentity(ident) for key, ident in seats.items()}
        self.usage = Usage()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        return self._ray.get(self.workers[0].generate.remote(list(requests)))

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        return self._ray.get(self.workers[0].score_options.remote(list(requests)))

    def run(self, specs: Sequence[DebateSpec], progress: Progress) -> Iterator[Wave]:
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
                self.usage.completion_tokens += sum(t.completion_tokens for _, t in item[0])
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
            inbox.put(("error", _first_line(exc)))
        inbox.put(("done", None))

    def close(self) -> None:
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
