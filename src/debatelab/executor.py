"""Executors: where a run's debates are run. Each takes debate specs and yields committed waves.

:class:`LocalExecutor` runs the waves in this process; :class:`~debatelab.ray_executor.RayExecutor`
shards them over Ray workers and commits each wave they stream back. :func:`open_executor` picks
one from ``config.executor.kind``; the orchestrator (:mod:`debatelab.experiment`) only ever sees
the :class:`Executor` interface.

:class:`Wave` is defined in :mod:`debatelab.runner`, where waves are made, and re-exported here:
the runner sits below both executors, so defining it here would make an import cycle.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Protocol, Sequence

from .config import ExperimentConfig
from .llm.base import LLM
from .llm.registry import load_llm
from .ray_executor import RayExecutor
from .runner import ResultSink, Wave, WaveRunner
from .seats import load_seat_llms, seat_adapters
from .types import DebateSpec

__all__ = ["Executor", "LocalExecutor", "Wave", "open_executor"]


class Executor(Protocol):
    """Runs debates and yields each wave after committing it to the run's store.

    A structural interface (implementations need not import it: the Ray one sits below this
    module). Use it as a context manager, or call :meth:`close` when done.
    """

    @property
    def llm(self) -> LLM:
        """The experiment's backend as this process sees it: persona generation and ``identity()``."""
        ...

    @property
    def seats(self) -> Mapping[str, LLM]:
        """Per-agent model key -> backend (see ``config.seat_models()``); at least their ``identity()``."""
        ...

    def run(self, specs: Sequence[DebateSpec], store: ResultSink) -> Iterator[Wave]:
        """Run every unfinished debate of ``specs``; yield each wave once ``store`` holds it."""
        ...

    def close(self) -> None:
        """Release what the executor started (workers); backends handed to it stay the caller's."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


class LocalExecutor:
    """Every wave in this process, on the given backends, committed by the runner itself."""

    def __init__(self, config: ExperimentConfig, llm: LLM, seats: Mapping[str, LLM], owned: Sequence[LLM] = ()):
        """``owned``: backends loaded for this executor, closed with it (given ones stay open)."""
        self.config = config
        self.llm = llm
        self.seats = dict(seats)
        self._owned = list(owned)

    def run(self, specs: Sequence[DebateSpec], store: ResultSink) -> Iterator[Wave]:
        """The runner writes each wave to ``store`` itself, then yields it."""
        yield from WaveRunner(self.llm, store, self.config, seat_llms=self.seats).waves(specs)

    def close(self) -> None:
        _close_all(self._owned)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_executor(config: ExperimentConfig, llm: LLM | None = None,
                  seat_llms: Mapping[str, LLM] | None = None) -> Executor:
    """The executor ``config.executor.kind`` names, its models loaded. A given ``llm`` (and
    ``seat_llms``, per-agent model key -> backend) is used as it is, in this process."""
    if llm is None and config.executor.kind == "ray":
        return RayExecutor(config)  # each worker loads its own models; none loads here
    owned: list[LLM] = []
    try:
        if llm is None:
            llm = load_llm(config.model, config.backend, adapters=seat_adapters(config))
            owned.append(llm)
        seats = load_seat_llms(config, llm, seat_llms)
    except BaseException:
        _close_all(owned)
        raise
    # Views of the experiment's engine (with_adapter) close with it; given backends stay open.
    owned += [seat for key, seat in seats.items()
              if not (seat_llms and key in seat_llms) and seat is not llm and not llm.shares_engine(seat)]
    return LocalExecutor(config, llm, seats, owned)


def _close_all(backends: list[LLM]) -> None:
    while backends:
        backends.pop().close()
