"""Kill -9 and resume on the real embedded model (issue D.14).

A ``debatelab run`` child process on the embedded SmolLM2 is SIGKILLed at several points; after
each kill a copy of the run directory is resumed to the end, and every export is compared with an
uninterrupted run of the same seeded config by :func:`debatelab.compare.compare_runs`: text and
integer columns exactly, float columns within ``compare.PRECISION``. Float values may differ in
the last bits (a resumed wave computes its prompts in other batch shapes and without the prefixes
the killed process had cached); see README, "Reliability".

The compare tests at the bottom need no model.
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_config
from debatelab.compare import EXPORTS, compare_runs, max_deltas

DRIVER = Path(__file__).with_name("crash_driver.py")

# Each kill counts commits in its own process, so one run directory killed again and again with
# "the first add_results commit" stops one wave further every time.
KILLS = [
    ("after-commit:add_personas:1", "personas committed, no debate step yet"),
    ("after-commit:add_results:1", "after the surveys at iteration 0"),
    ("after-commit:add_results:1", "after the first reply (mid-debate)"),
    ("after-commit:add_results:1", "after both replies, before the last surveys"),
]
TIMEOUT = 120


def _config(tmp_path: Path) -> Path:
    # threads 1: two runs share the 2 cores of a CI machine (results do not depend on it).
    return write_config(tmp_path / "c.yaml", model="embedded", topics=["climate_change"],
                        agents=["republican", "democrat"], rounds=1, repetitions=2, max_in_flight=2,
                        reply={"max_tokens": 8, "temperature": 1.0},
                        persona_generation={"max_tokens": 24, "min_words": 5}, backend={"threads": 1})


def _start(cfg: Path, out: Path, kill: str = "none:any:0", trace: Path | None = None) -> subprocess.Popen:
    """A ``debatelab run`` child; its output goes to a file (runs wait in the background, where a
    full pipe would block them)."""
    argv = [sys.executable, str(DRIVER), "--kill", kill, *(["--trace", str(trace)] if trace else []),
            "--", "run", str(cfg), "--out", str(out), "--quiet"]
    with (out.parent / f"{out.name}.{kill.replace(':', '-')}.log").open("w") as log:
        proc = subprocess.Popen(argv, cwd=cfg.parent, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log.name  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, code: int = 0) -> None:
    proc.wait(TIMEOUT)
    assert proc.returncode == code, Path(proc.log).read_text()[-3000:]  # type: ignore[attr-defined]


@pytest.mark.embedded
def test_kill9_then_resume_on_embedded_model_matches_uninterrupted_run(tmp_path):
    cfg = _config(tmp_path)
    clean = _start(cfg, tmp_path / "clean")
    run, trace = tmp_path / "run", tmp_path / "run.trace"
    resumed: list[tuple[str, Path, subprocess.Popen]] = []
    for step, (kill, what) in enumerate(KILLS):
        _finish(_start(cfg, run, kill, trace), -signal.SIGKILL)
        copy = tmp_path / f"resumed{step}"
        shutil.copytree(run, copy)  # the database as the kill left it (WAL included)
        for *_, earlier in resumed:  # one resume at a time beside the chain (and the clean run)
            earlier.wait(TIMEOUT)
        resumed.append((what, copy, _start(cfg, copy)))
    _finish(clean)
    for *_, proc in resumed:
        _finish(proc)

    killed = [line for line in trace.read_text().splitlines() if line.startswith("KILL")]
    assert killed == ["KILL after-commit add_personas"] + ["KILL after-commit add_results"] * 3

    clean_dir = tmp_path / "clean"
    with (clean_dir / "attitudes.csv").open() as fh:
        attitudes = list(csv.DictReader(fh))
    assert len(attitudes) == 2 * 2 * 2
    for what, copy, _ in resumed:
        assert all((copy / name).exists() for name in EXPORTS), what
        diffs = compare_runs(clean_dir, copy)
        assert not diffs, f"resumed {what}:\n" + "\n".join(map(str, diffs[:20]))
        deltas = max_deltas(clean_dir, copy)
        if any(r["method"] in ("both", "logprobs") for r in attitudes):  # distributions were recorded
            assert {f"attitudes.csv:p{i}" for i in range(11)} <= deltas.keys(), what
        worst = max(deltas, key=deltas.get, default=None)
        print(f"resumed {what}: largest float difference {deltas.get(worst, 0.0):.3g} ({worst})")


# ---- the comparison itself (no model) -------------------------------------------------------------

def _write(path: Path, rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_compare_floats_within_tolerance_everything_else_exactly(tmp_path):
    head = ["id", "n", "valid", "raw", "score", "p0", "new_float_column"]
    _write(tmp_path / "a/attitudes.csv", [head, ["x", 3, True, "7", 0.25, 0.5, 1e-05],
                                          ["y", 4, False, "", "", "", 2.0]])
    _write(tmp_path / "b/attitudes.csv", [head, ["x", 3, True, "7", 0.25 + 4e-5, 0.5 - 3e-5, 1.2e-05],
                                          ["y", 4, False, "", "", "", 2.0]])
    assert compare_runs(tmp_path / "a", tmp_path / "b") == []
    deltas = max_deltas(tmp_path / "a", tmp_path / "b")
    assert set(deltas) == {"attitudes.csv:score", "attitudes.csv:p0", "attitudes.csv:new_float_column"}
    assert deltas["attitudes.csv:score"] == pytest.approx(4e-5)
    assert [d.column for d in compare_runs(tmp_path / "a", tmp_path / "b", atol=1e-5, rtol=0)] == ["score", "p0"]
    assert compare_runs(tmp_path / "a", tmp_path / "b", atol=0, rtol=0)  # exact: every float pair that differs

    _write(tmp_path / "c/attitudes.csv", [head, ["x", 3, True, "7.", 0.25, 0.5 + 2e-4, 1e-05],
                                          ["y", 5, True, "", 0.1, "", 2.0]])
    diffs = {(d.row, d.column): d for d in compare_runs(tmp_path / "a", tmp_path / "c")}
    assert set(diffs) == {(1, "raw"), (1, "p0"), (2, "n"), (2, "valid"), (2, "score")}
    assert diffs[(1, "p0")].delta == pytest.approx(2e-4)
    assert diffs[(2, "score")].a == "" and diffs[(2, "score")].b == "0.1"  # empty vs value: a difference


def test_compare_tolerance_is_absolute_or_relative_whichever_is_larger(tmp_path):
    head = ["expected_score"]
    _write(tmp_path / "a/attitudes.csv", [head, [8.0], [8.0], [0.001], [float("inf")], [float("nan")]])
    _write(tmp_path / "b/attitudes.csv", [head, [8.0005], [8.002], [0.00105], [1.0], [float("nan")]])
    diffs = compare_runs(tmp_path / "a", tmp_path / "b")
    assert [d.row for d in diffs] == [2, 4]  # 5e-4 of 8 is within 1e-4 relative; 2e-3 is not; inf is no number
    assert diffs[1].delta is None
    assert compare_runs(tmp_path / "a", tmp_path / "b", atol=0, rtol=0)[0].row == 1


def test_compare_integer_and_text_columns_never_get_a_tolerance(tmp_path):
    head = ["turns", "text"]
    _write(tmp_path / "a/debates.csv", [head, [2, "1.5"], [3, "2.5"]])
    _write(tmp_path / "b/debates.csv", [head, [2, "1.5"], [4, "2.5 and more"]])
    diffs = compare_runs(tmp_path / "a", tmp_path / "b")
    assert [(d.row, d.column) for d in diffs] == [(2, "turns"), (2, "text")]
    assert all(d.delta is None for d in diffs)


def test_compare_files_headers_rows_and_jsonl(tmp_path):
    _write(tmp_path / "a/turns.csv", [["a", "b"], [1, 2]])
    _write(tmp_path / "b/turns.csv", [["a", "b", "c"], [1, 2, 3]])
    _write(tmp_path / "a/debates.csv", [["a"], [1], [2]])
    _write(tmp_path / "b/debates.csv", [["a"], [1]])
    (tmp_path / "a/personas.jsonl").write_text('{"id": "r0", "seed": 5, "w": [0.5, "x"]}\n')
    (tmp_path / "b/personas.jsonl").write_text('{"id": "r0", "seed": 5, "w": [0.50001, "x"]}\n')
    (tmp_path / "a/attitudes.csv").write_text("a\n")
    diffs = [(d.file, d.column) for d in compare_runs(tmp_path / "a", tmp_path / "b")]
    assert diffs == [("debates.csv", "rows"), ("turns.csv", "header"), ("attitudes.csv", None)]
    (tmp_path / "b/personas.jsonl").write_text('{"id": "r1", "seed": 6, "w": [0.5, "x"]}\n')
    diffs = [(d.file, d.row, d.column) for d in compare_runs(tmp_path / "a", tmp_path / "b", files=["personas.jsonl"])]
    assert diffs == [("personas.jsonl", 1, "id"), ("personas.jsonl", 1, "seed")]
