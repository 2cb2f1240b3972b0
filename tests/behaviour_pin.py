"""Behaviour pins: sha256 of every export of small seeded runs, recorded before a refactor.

``python tests/behaviour_pin.py --record`` runs each pinned config through the CLI (run, report,
show) and writes ``data/behaviour/hashes.json`` (the committed one was recorded on commit 1875dfa,
the code before issue 12's refactor, by copying this module and the configs into a checkout of it);
``tests/test_behaviour_pinned.py`` reruns them and compares.

Scripted runs involve no float kernels: their exports must be byte-identical everywhere. An
embedded run's floats depend on the CPU model (AMD EPYC, Intel Xeon with AMX) and on the thread
count (reductions split differently; survey expected scores moved by 2e-5 between 1 and 2
threads), so its exact hashes are compared only on the machine kind and thread count they were
recorded with; everywhere, its exports are also kept as files (``data/behaviour/embedded/``) and
compared with :func:`debatelab.compare.compare_runs`: text exactly, floats within ``PRECISION``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import platform
import sys
from pathlib import Path

PIN_DIR = Path(__file__).parent / "data" / "behaviour"
HASHES = PIN_DIR / "hashes.json"
CONFIGS = ("scripted", "scripted_seats", "embedded")
RUN_EXPORTS = ("personas.jsonl", "debates.csv", "attitudes.csv", "turns.csv")
HASHED_EXPORTS = ("attitudes.csv", "turns.csv")
"""Exports that gained a last ``prompt_sha`` column after the pins were recorded (issue 17)."""
KEPT = PIN_DIR / "embedded"
"""The embedded run's exports as recorded, for the comparison within float precision."""


def run_pinned(name: str, out: Path) -> dict[str, bytes]:
    """Every export of the pinned config ``name`` run into ``out``: the run's files, the
    report's summary.csv and the text ``debatelab show`` prints."""
    from debatelab.cli import main

    config = PIN_DIR / f"{name}.yaml"
    if main(["run", str(config), "--out", str(out), "--quiet"]) != 0:
        raise AssertionError(f"pinned run {name} did not complete")
    if main(["report", str(out), "--out", str(out / "report")]) != 0:
        raise AssertionError(f"report of pinned run {name} failed")
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        if main(["show", str(out)]) != 0:
            raise AssertionError(f"show of pinned run {name} failed")
    files = {f: (out / f).read_bytes() for f in RUN_EXPORTS}
    for f in HASHED_EXPORTS:
        files[f] = without_prompt_sha(files[f])
    files["summary.csv"] = (out / "report" / "summary.csv").read_bytes()
    files["show.txt"] = shown.getvalue().replace(str(out), "RUN_DIR").encode()
    return files


def without_prompt_sha(data: bytes) -> bytes:
    """An export as it was before issue 17: its last column, ``prompt_sha`` (a hash of each
    row's prompt, new then and filled in every row), taken off; every other byte as written."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    if rows[0][-1] != "prompt_sha" or not all(len(row[-1]) == 16 for row in rows[1:]):
        raise AssertionError("an export lacks its prompt_sha column, or a row its hash")
    text = io.StringIO(newline="")
    csv.writer(text).writerows(row[:-1] for row in rows)
    return text.getvalue().encode("utf-8")


def exact(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def fingerprints(files: dict[str, bytes]) -> dict[str, str]:
    return {f: exact(data) for f, data in sorted(files.items())}


def record(out_root: Path) -> dict[str, object]:
    runs = {name: run_pinned(name, out_root / name) for name in CONFIGS}
    KEPT.mkdir(exist_ok=True)
    for f, data in runs["embedded"].items():
        (KEPT / f).write_bytes(data)
    pins = {name: fingerprints(files) for name, files in runs.items()}
    return {"recorded_at_commit": _commit(), "cpu_model": cpu_model(), "threads": threads(), "python": sys.version.split()[0], "runs": pins}


def _commit() -> str:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=PIN_DIR)
    return done.stdout.strip() or "unknown"


def threads() -> int:
    """torch's intra-op threads: reductions split differently with another count."""
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/behaviour_pin.py --record")
    with tempfile.TemporaryDirectory() as tmp:
        HASHES.write_text(json.dumps(record(Path(tmp)), indent=1) + "\n")
    print(f"wrote {HASHES}")
