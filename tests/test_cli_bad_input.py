"""Bad input aimed at an existing, finished run: one line naming the problem, exit code 2, no
traceback, and the run's results exactly as they were (issue 5, point 6).

tests/test_cli.py holds the config catalogue checked against a fresh directory; this file adds
the cases that need a run to protect, plus files that are present but broken.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from debatelab.errors import EXIT_BAD_INPUT
from debatelab.cli import main

from conftest import make_bank, run_snapshot, write_config


def _bad_bank(root: Path, kind: str) -> Path:
    path = root / f"bank-{kind}.jsonl"
    good = make_bank(root / "good.jsonl").read_text().splitlines()
    if kind == "corrupt":
        path.write_text(good[0] + "\n{not json\n")
    elif kind == "duplicate names":
        path.write_text("\n".join(good + [good[0].replace('"r0"', '"r99"')]) + "\n")
    elif kind == "empty":
        path.write_text("\n")
    elif kind == "bad party":
        path.write_text(good[0].replace('"republican"', '"whig"') + "\n")
    return path


# (case, config overrides or None for the finished config, extra argv, expected words in the error)
CASES = [
    ("another config", {"rounds": 3}, [], "different config"),
    ("another model", None, ["--model", "scripted:other"], "different config"),
    ("another seed", {"seed": 99}, [], "different config"),
    ("more repetitions", None, ["--repetitions", "4"], "different config"),
    ("non-numeric repetitions", None, ["--repetitions", "many"], "whole number"),
    ("zero repetitions flag", None, ["--repetitions", "0"], "at least 1"),
    ("unknown flag", None, ["--turbo"], "unrecognized arguments"),
    ("unknown key", {"colour": "red"}, [], "colour"),
    ("zero max_in_flight", {"max_in_flight": 0}, [], "max_in_flight"),
    ("bad model string", {"model": "gpt4"}, [], "unknown model"),
    # Another model, even one that cannot load, is another config: refused before any load is tried.
    ("another model that would not load", {"model": "hf:/no/such/dir"}, [], "different config"),
    ("another model without its API key", {"model": "openai:gpt-4o", "backend": {"base_url": "https://api.example.com/v1",
                                                               "api_key_env": "DEBATELAB_NO_SUCH_KEY"}},
     [], "different config"),
    ("corrupt persona file", "corrupt", [], "line 2 is not valid JSON"),
    ("duplicate persona names", "duplicate names", [], "duplicate persona names"),
    ("empty persona file", "empty", [], "is empty"),
    ("unknown party in bank", "bad party", [], "party"),
    ("missing adapter", None, ["--adapter", "/no/such/adapter"], "adapter folder not found"),
]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input_leaves_the_finished_run_untouched(finished, tmp_path, capsys, monkeypatch, case):
    cfg, bank, run = finished
    _, overrides, argv, needle = next(c for c in CASES if c[0] == case)
    monkeypatch.delenv("DEBATELAB_NO_SUCH_KEY", raising=False)
    if isinstance(overrides, str):
        cfg = write_config(tmp_path / "c.yaml", personas=str(_bad_bank(tmp_path, overrides)))
    elif overrides is not None:
        cfg = write_config(tmp_path / "c.yaml", personas=str(bank), **overrides)
    before = run_snapshot(run)
    with pytest.raises(SystemExit) as exit_:
        sys.exit(main(["run", str(cfg), "--out", str(run), "--quiet", *argv]))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == EXIT_BAD_INPUT, err
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err
    assert "Traceback" not in err
    assert run_snapshot(run) == before


@pytest.mark.parametrize("out", ["file", "under-file", "proc"])
def test_unwritable_output_directory(tmp_path, capsys, bank, out):
    (tmp_path / "file").write_text("x")
    target = {"file": tmp_path / "file", "under-file": tmp_path / "file" / "run", "proc": Path("/proc/nope/run")}[out]
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank))
    code = main(["run", str(cfg), "--out", str(target), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1 and str(target) in err, err
    assert (tmp_path / "file").read_text() == "x"


def test_key_file_readable_by_others_is_refused(tmp_path, capsys, bank):
    key = tmp_path / "key"
    key.write_text("sk-test\n")
    os.chmod(key, 0o644)
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), model="openai:gpt-4o",
                       backend={"base_url": "https://api.example.com/v1", "api_key_env": "DEBATELAB_NO_SUCH_KEY",
                                "api_key_file": str(key)})
    code = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1 and str(key) in err and "600" in err, err
    assert "sk-test" not in err and not (tmp_path / "run").exists()
