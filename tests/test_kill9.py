"""Kill -9 anywhere: a run killed again and again, then resumed, ends byte-identical to one that
never was, with no turn lost and none duplicated (issue 5, point 1).

Each kill is SIGKILL to a real child process (tests/crash_driver.py) at a chosen or random point:
inside model calls during persona generation, before / during / after SQLite commits of every
kind, and at random wall-clock moments. The backend here is the scripted one, which is exact;
tests/test_resume_embedded.py does the same on the real embedded model, where resumed floats are
equal at ``debatelab.compare.PRECISION`` (float32 rounding depends on batch shapes).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_config

DRIVER = Path(__file__).with_name("crash_driver.py")
EXPORTS = ("personas.jsonl", "debates.csv", "turns.csv", "attitudes.csv")
TOPICS, REPS, AGENTS, ROUNDS = 2, 4, 3, 2

pytestmark = pytest.mark.slow


def _start(cfg: Path, out: Path, trace: Path, kill: str = "none:any:0", slow: float = 0.0) -> subprocess.Popen:
    argv = [sys.executable, str(DRIVER), "--kill", kill, "--slow", str(slow), "--trace", str(trace),
            "--", "run", str(cfg), "--out", str(out), "--quiet"]
    return subprocess.Popen(argv, cwd=cfg.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _kill_after_start(proc: subprocess.Popen, trace: Path, rng: random.Random) -> None:
    """SIGKILL the child a random moment after it has started working (its first trace line)."""
    seen = len(_lines(trace))
    deadline = time.monotonic() + 30
    while len(_lines(trace)) == seen and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.12))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        with trace.open("a") as fh:
            fh.write("KILL wall-clock\n")


def test_kill9_at_random_points_then_resume_matches_clean_run(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", topics=["climate_change", "racism"], repetitions=REPS,
                       rounds=ROUNDS, max_in_flight=2)
    clean = _start(cfg, tmp_path / "clean", tmp_path / "clean.trace")
    assert clean.wait(120) == 0, clean.stderr.read()

    out, trace, rng = tmp_path / "run", tmp_path / "run.trace", random.Random(5)
    planned = [  # (kill point, slow) -- persona generation first, then commits of every kind
        ("generate:any:1", 0.0), ("in-commit:add_personas:1", 0.0), ("before-commit:register:1", 0.0),
        ("in-commit:register:1", 0.0), ("in-commit:mark_running:1", 0.0), ("before-commit:add_results:1", 0.0),
        ("in-commit:add_results:2", 0.0), ("after-commit:add_results:1", 0.0), ("in-commit:add_results:1", 0.0),
    ]
    kills = 0
    for step in range(16):
        if step < len(planned):
            proc = _start(cfg, out, trace, *planned[step])
        else:  # random wall-clock kills while waves run
            proc = _start(cfg, out, trace, slow=0.04)
            _kill_after_start(proc, trace, rng)
        code = proc.wait(120)
        assert code in (0, -signal.SIGKILL), proc.stderr.read()
        kills += code == -signal.SIGKILL
    final = _start(cfg, out, trace)
    assert final.wait(120) == 0, final.stderr.read()

    killed_at = [line for line in _lines(trace) if line.startswith("KILL")]
    assert kills >= 10, killed_at
    assert kills == len(killed_at)
    assert "KILL generate 1" in killed_at  # inside persona generation
    assert any(k.startswith("KILL in-commit add_personas") for k in killed_at)
    assert sum(k.startswith("KILL in-commit add_results") for k in killed_at) >= 2
    for name in EXPORTS:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name

    db = sqlite3.connect(out / "run.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    debates = TOPICS * REPS
    assert db.execute("SELECT COUNT(*) FROM debates WHERE status = 'complete'").fetchone()[0] == debates
    assert db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == debates * AGENTS * ROUNDS
    assert db.execute("SELECT COUNT(*) FROM surveys").fetchone()[0] == debates * AGENTS * (ROUNDS + 1)
    assert db.execute("SELECT COUNT(*) FROM personas").fetchone()[0] == 2 * REPS
    assert db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()[0] == "complete"
