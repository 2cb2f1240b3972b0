"""Shared fixtures. This directory is on sys.path (pytest's rootdir conftest), so tests import
``fakes`` and ``tiny_model`` directly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from debatelab.personas import save_bank
from debatelab.types import Persona

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


def make_bank(path: Path, per_party: int = 6) -> Path:
    personas = [
        Persona(id=f"{party[0]}{i}", party=party, name=f"{party[:3].title()}{i}",
                background=f"You are {party[:3].title()}{i}, a lifelong {party} from town {i}.")
        for party in ("republican", "democrat") for i in range(per_party)
    ]
    save_bank(personas, path)
    return path


def write_config(path: Path, **values: object) -> Path:
    base = {"model": "scripted", "topics": ["climate_change"], "agents": ["republican", "democrat", "default"],
            "rounds": 2, "repetitions": 3, "seed": 7}
    base.update(values)
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    return make_bank(tmp_path / "bank.jsonl")
