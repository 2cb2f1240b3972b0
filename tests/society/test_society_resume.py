"""A society killed with SIGKILL mid-step, then run again, ends byte-identical to a clean run;
and on a local Ray instance it gives the same results as in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from debatelab.config import load_config
from debatelab.experiment import run_experiment

DRIVER = Path(__file__).parents[1] / "crash_driver.py"
EXPORTS = ("agents.csv", "edges.csv", "encounters.csv", "panel.csv", "memories.csv", "turns.csv", "debates.csv",
           "society.json")

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "society.yaml"
    path.write_text(yaml.safe_dump({
        "model": "opinion-sim:influence=0.3", "topics": ["gun_violence", "racism"], "seed": 5, **extra,
        "society": {"population": 40, "steps": 3, "memory": "summary", "encounter_size": 3,
                    "network": {"kind": "barabasi_albert", "degree": 4}}}))
    return path


def _drive(cfg: Path, out: Path, kill: str) -> int:
    argv = [sys.executable, str(DRIVER), "--kill", kill, "--", "run", str(cfg), "--out", str(out), "--quiet"]
    return subprocess.run(argv, cwd=cfg.parent, capture_output=True, text=True, timeout=300).returncode


def test_kill9_mid_step_then_resume_matches_a_clean_run(tmp_path):
    cfg = _config(tmp_path)
    assert _drive(cfg, tmp_path / "clean", "none:any:0") == 0
    # Kills inside the waves of different phases: step 0's panel, an encounter, a note, a later panel.
    codes = [_drive(cfg, tmp_path / "killed", f"in-commit:add_results:{n}") for n in (1, 3, 6, 9)]
    assert codes == [-signal.SIGKILL] * 4  # every kill landed (none of the runs finished first)
    assert _drive(cfg, tmp_path / "killed", "none:any:0") == 0
    for name in EXPORTS:
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_ray_executor_runs_the_same_society(tmp_path):
    if os.environ.get("CI"):  # CI installs debatelab[ray]: a missing Ray must fail there, not skip
        import ray
    else:
        ray = pytest.importorskip("ray", reason="needs debatelab[ray] (scripts/setup.sh installs it)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        local = run_experiment(load_config(_config(tmp_path)), tmp_path / "local")
        sharded = run_experiment(load_config(_config(tmp_path, executor={"kind": "ray", "workers": 2})),
                                 tmp_path / "ray")
    finally:
        ray.shutdown()
    assert sharded.complete == local.complete == local.debates
    for name in EXPORTS:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
