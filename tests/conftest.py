"""Shared fixtures. This directory is on sys.path (pytest's rootdir conftest), so tests import
``fakes`` and ``tiny_model`` directly."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from fakes.openai_server import FakeOpenAIServer

from debatelab.personas import save_bank
from debatelab.types import Persona

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a model hub


def make_bank(path: Path, per_party: int = 6) -> Path:
    personas = [
        Persona(id=f"{party[0]}{i}", party=party, name=f"{party[:3].title()}{i}",
                background=f"You are {party[:3].title()}{i}, a lifelong {party} from town {i}.")
        for party in ("republican", "democrat") for i in range(per_party)
    ]
    save_bank(personas, path)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``debatelab ARGV`` as the shell runs it: its exit code and its stdout + stderr."""
    from debatelab.cli import main

    with pytest.raises(SystemExit) as exit_:
        sys.exit(main(list(argv)))
    out, err = capsys.readouterr()
    return exit_.value.code, out + err


def write_config(path: Path, **values: object) -> Path:
    base = {"model": "scripted", "topics": ["climate_change"], "agents": ["republican", "democrat", "default"],
            "rounds": 2, "repetitions": 3, "seed": 7}
    base.update(values)
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random Llama for the whole session; tests only read it (copy it to change it)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(autouse=True)
def _hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the network: huggingface_hub reads HF_HUB_OFFLINE once, at its import, so the
    environment variable above comes too late if it was imported before."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # not imported yet: it will read the environment variable
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def _own_verdicts(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Persona-fidelity verdicts a test records (check-model) stay in its own folder, and no verdict
    the developer recorded makes a test's run warn."""
    folder = tmp_path_factory.mktemp("verdicts")
    monkeypatch.setenv("DEBATELAB_VERDICTS", str(folder))
    return folder


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    return make_bank(tmp_path / "bank.jsonl")


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A fault-free OpenAI-compatible server on 127.0.0.1 (tests add faults as they need)."""
    with FakeOpenAIServer() as fake:
        yield fake


def run_snapshot(run: Path) -> dict[str, object]:
    """Export bytes, the database's logical content, and which files the run directory holds
    (SQLite's own -wal/-shm files come and go with every reader, so they are left out)."""
    names = sorted(p.name for p in run.iterdir() if not p.name.endswith(("-wal", "-shm")))
    files = {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.suffix in (".csv", ".jsonl")}
    db = sqlite3.connect(f"file:{run / 'run.sqlite'}?mode=ro", uri=True)
    dump = list(db.iterdump())
    db.close()
    return {"names": names, "files": files, "db": dump}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(config, bank, run directory) of a complete scripted run, for bad input to be aimed at."""
    from debatelab.cli import main

    root = tmp_path_factory.mktemp("finished")
    bank = make_bank(root / "bank.jsonl")
    cfg = write_config(root / "c.yaml", personas=str(bank))
    assert main(["run", str(cfg), "--out", str(root / "run"), "--quiet"]) == 0
    return cfg, bank, root / "run"
