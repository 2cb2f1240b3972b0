"""The executor seam: waves as committed, local and Ray executors behind one interface, and views
of one engine asked in one mixed call per wave, request for request as separate models would be."""

from __future__ import annotations

from pathlib import Path

import pytest

from debatelab import executor as executor_module
from debatelab import ray_executor
from debatelab import seats as seats_module
from debatelab.config import load_config
from debatelab.errors import RunFailed
from debatelab.executor import Executor, LocalExecutor, Wave, open_executor
from debatelab.experiment import run_experiment
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.planning import plan_debates
from debatelab.runner import WaveRunner

from conftest import write_config

EXPORTS = ("debates.csv", "turns.csv", "attitudes.csv")


class MemorySink:
    """A ResultSink in memory that records every wave it was handed."""

    def __init__(self) -> None:
        self.waves: list[Wave] = []
        self.running: list[str] = []

    def status(self, debate_id: str) -> str:
        return "pending"

    def progress(self, debate_id: str):
        return [], set()

    def mark_running(self, debate_ids) -> None:
        self.running += list(debate_ids)

    def add_results(self, turns, surveys, finished, failed=()) -> None:
        self.waves.append(Wave(turns, surveys, finished, list(failed)))


def _specs(cfg, llm, seats=None):
    return plan_debates(cfg, load_bank(cfg.personas), llm.identity(),
                        {k: s.identity() for k, s in (seats or {}).items()})


def test_the_runner_yields_each_wave_it_committed(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
    llm, sink = ScriptedLLM(), MemorySink()
    specs = _specs(cfg, llm)
    yielded = []
    for wave in WaveRunner(llm, sink, cfg).waves(specs):
        assert sink.waves[-1] == wave  # committed before it is yielded
        yielded.append(wave)
    assert yielded == sink.waves
    assert sorted(d for w in yielded for d in w.finished) == sorted(s.debate_id for s in specs)
    local, again = LocalExecutor(cfg, ScriptedLLM(), {}), MemorySink()
    with local as ex:
        assert list(ex.run(specs, again)) == again.waves == yielded


class _Closing(ScriptedLLM):
    def __init__(self, name="", closed=None):
        super().__init__(name)
        self.closed = closed if closed is not None else []

    def close(self):
        self.closed.append(self.name)


def test_an_executor_closes_the_backends_it_loaded_and_no_other(tmp_path, bank, monkeypatch):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), agents=[
        "republican", {"role": "democrat", "model": "scripted:blue"}, "default"]))
    closed: list[str] = []
    monkeypatch.setattr(executor_module, "load_llm", lambda *a, **k: _Closing("loaded", closed))
    monkeypatch.setattr(seats_module, "load_llm", lambda model, *a, **k: _Closing(model, closed))
    with open_executor(cfg):
        assert closed == []
    assert sorted(closed) == ["loaded", "scripted:blue"]
    closed.clear()
    with open_executor(cfg, _Closing("given", closed), {"scripted:blue": _Closing("blue", closed)}):
        pass
    assert closed == []  # the caller's backends stay open


def test_open_executor_loads_locally_unless_given_a_model(tmp_path, bank, monkeypatch):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), agents=[
        "republican", {"role": "democrat", "model": "scripted:blue"}, "default"]))
    loads = []
    monkeypatch.setattr(executor_module, "load_llm", lambda *a, **k: loads.append((a, k)) or ScriptedLLM())
    ex = open_executor(cfg)
    assert isinstance(ex, LocalExecutor) and loads == [(("scripted", cfg.backend), {"adapters": []})]
    assert set(ex.seats) == {"scripted:blue"}
    given, blue = ScriptedLLM("red"), ScriptedLLM("blue")
    on_ray = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"kind": "ray"})})
    ex = open_executor(on_ray, given, {"scripted:blue": blue})  # a given model runs here, even on Ray
    assert isinstance(ex, LocalExecutor) and ex.llm is given and ex.seats == {"scripted:blue": blue}


# ---- the Ray driver, on a stand-in for Ray that runs the actors in this process -------------
class _RayError(Exception):
    pass


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)  # a "ref" is the value itself; a streaming call, the generator

    def options(self, **_):
        return self


class _Handle:
    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        return _Method(getattr(self.obj, name))


class FakeRay:
    exceptions = type("exceptions", (), {"RayError": _RayError})

    def __init__(self) -> None:
        self.killed: list[_Handle] = []

    def is_initialized(self) -> bool:
        return True

    def remote(self, **_):
        return lambda cls: type("Actor", (), {"remote": staticmethod(lambda *a: _Handle(cls(*a)))})

    def get(self, ref):
        return ref

    def kill(self, handle) -> None:
        self.killed.append(handle)


@pytest.fixture
def fake_ray(monkeypatch):
    ray = FakeRay()
    monkeypatch.setattr(ray_executor, "_import_ray", lambda: ray)
    monkeypatch.setattr(ray_executor, "load_llm", lambda *a, **k: ScriptedLLM())
    return ray


def _ray_config(tmp_path: Path, bank: Path, **values):
    return load_config(write_config(tmp_path / "ray.yaml", personas=str(bank), repetitions=3, max_in_flight=2,
                                    executor={"kind": "ray", "workers": 2}, **values))


def test_the_ray_driver_commits_each_wave_before_yielding_it(tmp_path, bank, fake_ray):
    cfg = _ray_config(tmp_path, bank)
    sink = MemorySink()
    with RayExecutorOf(cfg) as ex:
        specs = _specs(cfg, ex.llm)
        for wave in ex.run(specs, sink):
            assert sink.waves[-1] == wave  # already committed
        assert ex.llm.usage.completion_tokens == sum(t.completion_tokens for w in sink.waves for _, t in w.turns) > 0
        assert sorted(sink.running) == sorted(s.debate_id for s in specs)
    assert len(fake_ray.killed) == 2  # closing stops both workers


def RayExecutorOf(cfg) -> Executor:
    ex = open_executor(cfg)
    assert isinstance(ex, ray_executor.RayExecutor)
    return ex


def test_a_ray_run_equals_a_local_run(tmp_path, bank, fake_ray):
    local = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=3, max_in_flight=2))
    run_experiment(local, tmp_path / "local")
    assert run_experiment(_ray_config(tmp_path, bank), tmp_path / "ray").complete == 3
    for name in EXPORTS:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_ray_failures_are_one_line_with_the_cause_ray_puts_last(tmp_path, bank, fake_ray, monkeypatch):
    def broken(self, specs, progress):
        raise _RayError("Traceback (most recent call last):\n  File x\nValueError: the real cause")
        yield  # a generator, as the actor method is

    monkeypatch.setattr(ray_executor.DebateWorker, "run", broken)
    cfg = _ray_config(tmp_path, bank)
    with RayExecutorOf(cfg) as ex, pytest.raises(RunFailed, match="^a Ray worker failed: ValueError: the real cause$"):
        list(ex.run(_specs(cfg, ex.llm), MemorySink()))

    def no_start(self):
        raise _RayError("header\nRuntimeError: no GPU")

    monkeypatch.setattr(ray_executor.DebateWorker, "identities", no_start)
    with pytest.raises(RunFailed, match="^Ray workers failed to start: RuntimeError: no GPU$"):
        open_executor(cfg)


# ---- views of one engine: one mixed call, request for request as separate models -------------
class _Engine:
    def __init__(self, shared: bool) -> None:
        self.shared = shared
        self.calls: list[tuple[str, object, list[tuple[object, list]]]] = []


class View(ScriptedLLM):
    def __init__(self, engine: _Engine, name: str):
        super().__init__(name)
        self.engine = engine

    def shares_engine(self, other):
        return self.engine.shared and isinstance(other, View) and other.engine is self.engine

    def generate(self, requests):
        self.engine.calls.append(("generate", self, [(self, list(requests))]))
        return super().generate(requests)

    def score_options(self, requests):
        self.engine.calls.append(("score", self, [(self, list(requests))]))
        return super().score_options(requests)

    def generate_mixed(self, parts):
        self.engine.calls.append(("generate", self, [(v, list(r)) for v, r in parts]))
        return [ScriptedLLM.generate(v, r) for v, r in parts]

    def score_options_mixed(self, parts):
        self.engine.calls.append(("score", self, [(v, list(r)) for v, r in parts]))
        return [ScriptedLLM.score_options(v, r) for v, r in parts]


def _run_views(tmp_path: Path, bank: Path, shared: bool):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), max_in_flight=8, agents=[
        {"role": "republican", "model": "scripted:red"}, "democrat", {"role": "default", "model": "scripted:grey"}]))
    engine, plain = _Engine(shared), ScriptedLLM("plain")
    base, red = View(engine, "base"), View(engine, "red")
    seats = {"scripted:red": red, "scripted:grey": plain}
    sink = MemorySink()
    WaveRunner(base, sink, cfg, seat_llms=seats).run(_specs(cfg, base, seats))
    return engine.calls, sink.waves, (base, red), plain


def _contents(wave: Wave) -> tuple[list, list, list, list]:
    """A wave's results in a canonical order (within a wave they come in call order)."""
    return (sorted(wave.turns, key=lambda x: (x[0], x[1].agent_index)),
            sorted(wave.surveys, key=lambda x: (x[0], x[1].agent_index)), sorted(wave.finished), sorted(wave.failed))


def _flat(calls, kind: str) -> list[tuple[str, object]]:
    return [(view.name, r) for k, _, parts in calls if k == kind for view, reqs in parts for r in reqs]


def test_views_of_one_engine_go_out_together_after_the_other_models(tmp_path, bank):
    mixed, mixed_waves, _, plain = _run_views(tmp_path, bank, shared=True)
    apart, apart_waves, _, _ = _run_views(tmp_path, bank, shared=False)
    assert list(map(_contents, mixed_waves)) == list(map(_contents, apart_waves))  # the same results, wave for wave
    assert plain.generate_calls and plain.score_calls  # the other model is asked on its own
    # Every request reaches the same view, in the same order, as if the views were two models ...
    for kind in ("generate", "score"):
        assert _flat(mixed, kind) == _flat(apart, kind)
    # ... but at most one generate and one score call reach the engine per wave.
    assert len(mixed) <= 2 * len(mixed_waves) < len(apart)
    assert any(len(parts) == 2 for _, _, parts in mixed)
    assert all(leader is parts[0][0] for _, leader, parts in mixed if len(parts) == 1)


def test_other_models_are_asked_before_a_shared_engine(tmp_path, bank):
    order = []
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), agents=[
        {"role": "republican", "model": "scripted:red"}, "democrat", {"role": "default", "model": "scripted:grey"}]))
    engine = _Engine(shared=True)

    class Logged(ScriptedLLM):
        def generate(self, requests):
            order.append(self.name)
            return super().generate(requests)

    class LoggedView(View):
        def generate_mixed(self, parts):
            order.append("engine")
            return super().generate_mixed(parts)

    base, red, grey = LoggedView(engine, "base"), LoggedView(engine, "red"), Logged("grey")
    seats = {"scripted:red": red, "scripted:grey": grey}
    WaveRunner(base, MemorySink(), cfg, seat_llms=seats).run(_specs(cfg, base, seats))
    assert order and order[0] == "grey" and order[1] == "engine"  # grey's bucket comes last, yet goes first
