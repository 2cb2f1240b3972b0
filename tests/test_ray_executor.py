"""The Ray executor on a real local Ray instance: sharded workers, one writer, resume intact."""

from __future__ import annotations

import os

import pytest

from debatelab.config import load_config
from debatelab.experiment import run_experiment

from conftest import write_config

if os.environ.get("CI"):  # CI installs debatelab[ray]: a missing Ray must fail there, not skip
    import ray
else:
    ray = pytest.importorskip("ray", reason="needs debatelab[ray] (scripts/setup.sh installs it)")
EXPORTS = ("debates.csv", "turns.csv", "attitudes.csv")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_run_equals_local_run_and_resumes_a_local_crash(tmp_path, bank, local_ray):
    from test_runner import CrashingLLM, _Crash

    values = dict(personas=str(bank), topics=["climate_change", "racism"], repetitions=3, max_in_flight=2)
    local = load_config(write_config(tmp_path / "c.yaml", **values))
    sharded = load_config(write_config(tmp_path / "c.yaml", **values, executor={"kind": "ray", "workers": 2}))
    assert run_experiment(local, tmp_path / "local").complete == 6
    assert run_experiment(sharded, tmp_path / "ray").complete == 6
    for name in EXPORTS:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    # A run that crashed locally resumes on Ray: only the missing steps run, results identical.
    with pytest.raises(_Crash):
        run_experiment(local, tmp_path / "mixed", llm=CrashingLLM(5))
    assert run_experiment(sharded, tmp_path / "mixed").complete == 6
    for name in EXPORTS:
        assert (tmp_path / "mixed" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_ray_generates_personas_on_a_worker(tmp_path, local_ray):
    cfg = load_config(write_config(tmp_path / "c.yaml", repetitions=2, executor={"kind": "ray", "workers": 2}))
    local = load_config(write_config(tmp_path / "c.yaml", repetitions=2))
    assert run_experiment(cfg, tmp_path / "ray").complete == 2
    run_experiment(local, tmp_path / "local")
    for name in ("personas.jsonl", *EXPORTS):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
