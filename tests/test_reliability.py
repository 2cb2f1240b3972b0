"""Graceful stop, one writer, failed debates, id safety and bounded memory (issue 5)."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from debatelab.errors import EXIT_BAD_INPUT, EXIT_FAILED
from debatelab import stopping
from debatelab.cli import main
from debatelab.config import load_config
from debatelab.experiment import run_experiment
from debatelab.llm.base import Completion, OptionScores
from debatelab.llm.scripted import ScriptedLLM
from debatelab.planning import plan_debates
from debatelab.personas import load_bank
from debatelab.store import open_store

from conftest import make_bank, write_config

DRIVER = Path(__file__).with_name("crash_driver.py")
EXPORTS = ("debates.csv", "turns.csv", "attitudes.csv")


def _driver(cfg: Path, out: Path, trace: Path, slow: float) -> subprocess.Popen:
    argv = [sys.executable, str(DRIVER), "--slow", str(slow), "--trace", str(trace), "--",
            "run", str(cfg), "--out", str(out), "--quiet"]
    return subprocess.Popen(argv, cwd=cfg.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(trace: Path, needle: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if trace.exists() and needle in trace.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"child never reached {needle!r}: {proc.poll()} {proc.stderr.read() if proc.stderr else ''}")


def _meta(run: Path, key: str) -> str | None:
    db = sqlite3.connect(f"file:{run / 'run.sqlite'}?mode=ro", uri=True)
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    db.close()
    return row[0] if row else None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# ---- graceful stop --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_commits_marks_interrupted_and_resumes(tmp_path, bank, sig):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=4, max_in_flight=2)
    assert main(["run", str(cfg), "--out", str(tmp_path / "clean"), "--quiet"]) == 0
    proc = _driver(cfg, tmp_path / "run", tmp_path / "trace", slow=0.05)
    _wait_for(tmp_path / "trace", "commit add_results", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("interrupted:") and "Traceback" not in err
    assert signal.Signals(sig).name in line and "run the same command again to resume" in line
    assert _meta(tmp_path / "run", "state") == "interrupted"
    db = sqlite3.connect(tmp_path / "run/run.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM surveys").fetchone()[0] > 0  # what was committed is kept
    assert db.execute("SELECT COUNT(*) FROM debates WHERE status = 'complete'").fetchone()[0] < 4
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    for name in EXPORTS:
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    assert _meta(tmp_path / "run", "state") == "complete"


def test_signal_inside_a_commit_waits_for_the_commit(tmp_path):
    store = open_store(tmp_path / "run")
    before = signal.getsignal(signal.SIGTERM)
    try:
        with stopping.handle_signals():
            with pytest.raises(stopping.StopRequested) as stop:
                with store.transaction() as db:
                    db.execute("INSERT INTO meta VALUES ('a', '1')")
                    os.kill(os.getpid(), signal.SIGTERM)  # handled at once, but deferred
                    db.execute("INSERT INTO meta VALUES ('b', '2')")  # still runs
                pytest.fail("the deferred stop should be raised as the commit finishes")
            assert stop.value.signum == signal.SIGTERM
            with pytest.raises(stopping.StopRequested):
                os.kill(os.getpid(), signal.SIGINT)  # outside a commit: raised at once
                time.sleep(1)
        assert store.get_meta("a") == "1" and store.get_meta("b") == "2"
    finally:
        store.close()
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


# ---- one writer -----------------------------------------------------------------------------
@pytest.mark.slow
def test_second_run_on_a_busy_directory_is_refused_and_first_finishes(tmp_path, bank, capsys):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=3, max_in_flight=1)
    assert main(["run", str(cfg), "--out", str(tmp_path / "clean"), "--quiet"]) == 0
    capsys.readouterr()
    proc = _driver(cfg, tmp_path / "run", tmp_path / "trace", slow=0.05)
    _wait_for(tmp_path / "trace", "commit add_results", proc)
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err == f"error: run directory {tmp_path / 'run'} is in use by another debatelab process"
    assert proc.wait(60) == 0, proc.stderr.read()
    for name in EXPORTS:
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


# ---- failed debates -------------------------------------------------------------------------
class FlakyLLM(ScriptedLLM):
    """Fails every request of the debates whose prompt mentions a broken agent."""

    def __init__(self, broken: set[str]):
        super().__init__()
        self.broken = broken

    def _is_broken(self, prompt) -> bool:
        return any(name in prompt.flat_text() for name in self.broken)

    def generate(self, requests):
        outs = super().generate(requests)
        return [Completion("", error="HTTP 503 after 5 attempts") if self._is_broken(r.prompt) else o
                for r, o in zip(requests, outs)]

    def score_options(self, requests):
        outs = super().score_options(requests)
        return [OptionScores((), error="timed out") if self._is_broken(r.prompt) else o
                for r, o in zip(requests, outs)]


def test_failed_debates_are_recorded_reported_and_resumed(tmp_path, bank, capsys, monkeypatch):
    cfg_path = write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=4)
    cfg = load_config(cfg_path)
    run_experiment(cfg, tmp_path / "clean", llm=ScriptedLLM())
    first = plan_debates(cfg, load_bank(bank), ScriptedLLM().identity())[0]
    broken = {first.agents[0].name}  # a partisan seated in exactly one repetition
    monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: FlakyLLM(broken))
    assert main(["run", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert "3/4 debates complete" in out
    assert err.strip().startswith("error: 1 debate(s) failed") and "run the same command again" in err
    debates = {r["debate_id"]: r for r in _rows(tmp_path / "run/debates.csv")}
    failed = [r for r in debates.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] in {"timed out", "HTTP 503 after 5 attempts"}
    assert failed[0]["failures"] == "1" and failed[0]["turns"] == "0"
    assert _meta(tmp_path / "run", "state") == "incomplete"
    from debatelab.analysis.report import build_report

    html = build_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "3 complete; left out of this report: 1 failed" in html
    assert failed[0]["debate_id"] in html and failed[0]["error"] in html

    monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: ScriptedLLM())
    assert main(["run", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    for name in ("turns.csv", "attitudes.csv"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    rows = {r["debate_id"]: r for r in _rows(tmp_path / "run/debates.csv")}
    assert all(r["status"] == "complete" and r["error"] == "" for r in rows.values())
    assert rows[failed[0]["debate_id"]]["failures"] == "1"  # the history of the failure is kept


def test_invalid_survey_answers_are_counted_in_exports_and_summary(tmp_path, bank, capsys, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), survey={"method": "generate"})
    monkeypatch.setattr("debatelab.executor.load_llm",
                        lambda *a, **k: ScriptedLLM(reply_fn=lambda r: "6 or 7"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "invalid survey answers: 27/27 (100.0 %)" in capsys.readouterr().out
    rows = _rows(tmp_path / "run/debates.csv")
    assert [r["invalid_surveys"] for r in rows] == ["9", "9", "9"]
    attitudes = _rows(tmp_path / "run/attitudes.csv")
    assert {(a["valid"], a["score"], a["raw"]) for a in attitudes} == {("False", "", "6 or 7")}


# ---- id safety ------------------------------------------------------------------------------
def test_every_result_affecting_input_changes_the_debate_ids(tmp_path, bank):
    """Resume keys are debate ids: any change a result depends on must change every id."""
    personas = load_bank(bank)
    base_cfg = {"personas": str(bank)}
    variants = {
        "base": ({}, {"backend": "hf", "model": "m", "revision": None, "adapter": None, "base_url": None}),
        "model": ({}, {"backend": "hf", "model": "m2", "revision": None, "adapter": None, "base_url": None}),
        "revision": ({}, {"backend": "hf", "model": "m", "revision": "abc", "adapter": None, "base_url": None}),
        "adapter": ({}, {"backend": "hf", "model": "m", "revision": None, "adapter": "sha:1", "base_url": None}),
        "url": ({}, {"backend": "hf", "model": "m", "revision": None, "adapter": None, "base_url": "http://h"}),
        "seed": ({"seed": 8}, None),
        "reply temperature": ({"reply": {"temperature": 0.5}}, None),
        "reply top_p": ({"reply": {"top_p": 0.9}}, None),
        "reply max_tokens": ({"reply": {"max_tokens": 99}}, None),
        "survey method": ({"survey": {"method": "generate"}}, None),
        "survey max_tokens": ({"survey": {"max_tokens": 9}}, None),
        "rounds": ({"rounds": 3}, None),
    }
    base_identity = variants["base"][1]
    ids: dict[str, set[str]] = {}
    for name, (overrides, identity) in variants.items():
        cfg = load_config(write_config(tmp_path / "c.yaml", **base_cfg, **overrides))
        ids[name] = {s.debate_id for s in plan_debates(cfg, personas, identity or base_identity)}
    import debatelab.planning as planning

    cfg = load_config(write_config(tmp_path / "c.yaml", **base_cfg))
    original = planning.TEMPLATE_VERSION
    try:
        planning.TEMPLATE_VERSION = original + "-edited"
        ids["template version"] = {s.debate_id for s in plan_debates(cfg, personas, base_identity)}
    finally:
        planning.TEMPLATE_VERSION = original
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], f"{a} and {b} share debate ids"


# ---- bounded memory -------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from debatelab.config import load_config
    from debatelab.experiment import run_experiment
    from debatelab.store import RunStore

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    samples = []
    original = RunStore.add_results
    def add_results(self, turns, surveys, finished, failed=()):
        original(self, turns, surveys, finished, failed)
        done = self.db.execute("SELECT COUNT(*) FROM debates WHERE status = 'complete'").fetchone()[0]
        samples.append((done, rss_kib()))
    RunStore.add_results = add_results

    summary = run_experiment(load_config(Path(sys.argv[1])), Path(sys.argv[2]))
    print(json.dumps({"complete": summary.complete, "samples": samples}))
""")


@pytest.mark.slow
def test_memory_stays_flat_over_thousands_of_debates(tmp_path):
    bank = make_bank(tmp_path / "bank.jsonl", per_party=40)
    cfg = write_config(tmp_path / "c.yaml", model="scripted", personas=str(bank), agents=["republican", "democrat"],
                       topics=["climate_change", "racism", "gun_violence", "illegal_immigration"],
                       repetitions=750, rounds=1, max_in_flight=64)
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(cfg), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["complete"] == 3000
    samples = result["samples"]
    warm = next(rss for finished, rss in samples if finished >= 500)
    peak_after = max(rss for finished, rss in samples if finished >= 500)
    # 2,500 more debates (5,000 turns, 10,000 surveys) may not grow memory by more than 2 MiB,
    # under 1 KiB per debate: less than one debate's own text, so no result may be kept around.
    # (Measured: ~0.1 MiB; keeping the scripted backend's request history adds ~17 MiB.)
    assert peak_after - warm < 2 * 1024, (warm, peak_after)


# ---- untrusted text -------------------------------------------------------------------------
HOSTILE_NAMES = ["../../escape", "$(touch PWNED)", "`touch PWNED2`", "<script>alert(1)</script>", "a;rm -rf x",
                 "/etc/passwd", "%s%n{0}"]


def test_hostile_names_and_text_never_reach_paths_shells_or_templates(tmp_path, monkeypatch):
    from debatelab.analysis.report import build_report
    from debatelab.personas import save_bank
    from debatelab.types import Persona

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    story = "I am {{ 'INJ' ~ 'ECTED' }} and {% raw %}x{% endraw %} and $(touch PWNED3) and ../../../tmp/x."
    personas = [Persona(id=f"{party[0]}{i}", party=party, name=name, background=f"You are {name}. {story}")
                for i, name in enumerate(HOSTILE_NAMES) for party in ("republican", "democrat")
                if (i % 2 == 0) == (party == "republican")]
    save_bank(personas, work / "bank.jsonl")
    cfg = write_config(work / "c.yaml", personas=str(work / "bank.jsonl"), agents=["republican", "democrat"],
                       repetitions=2, survey={"method": "generate"})
    monkeypatch.setattr("debatelab.executor.load_llm",
                        lambda *a, **k: ScriptedLLM(reply_fn=lambda r: f"{story} $(touch PWNED4) 5"))
    assert main(["run", str(cfg), "--out", "run", "--quiet"]) == 0
    html = build_report([work / "run"], work / "report").read_text()
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    expected_roots = {"work", "work/run", "work/report", "work/bank.jsonl", "work/c.yaml"}
    assert all(any(w == r or w.startswith(r + "/") for r in expected_roots) for w in written), written
    assert not any("PWNED" in w or "escape" in w or "passwd" in w for w in written)
    names_in_run = {p.name for p in (work / "run").iterdir()} | {p.name for p in (work / "report").rglob("*")}
    assert names_in_run <= {"run.sqlite", "run.sqlite-wal", "run.sqlite-shm", ".lock", "debates.csv",
                            "turns.csv", "attitudes.csv", "report.html", "summary.csv", "figures"} | {
        p.name for p in (work / "report" / "figures").iterdir()}
    assert "INJECTED" not in html and "{{ &#39;INJ&#39; ~ &#39;ECTED&#39; }}" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
