"""Issue 12 changed seams, not behaviour: every export of the pinned seeded runs is what the code
before the refactor wrote (recorded by ``tests/behaviour_pin.py --record`` on commit 1875dfa; see
that module for why an embedded run is compared exactly only on the machine it was recorded on)."""

from __future__ import annotations

import json

import pytest

import behaviour_pin as pins
from debatelab.compare import compare_runs

RECORDED = json.loads(pins.HASHES.read_text())
CSV_EXPORTS = (*pins.RUN_EXPORTS, "summary.csv")


@pytest.mark.parametrize("name", [n for n in pins.CONFIGS if n != "embedded"])
def test_every_export_of_a_scripted_run_is_byte_identical_to_before_the_refactor(name, tmp_path):
    files = pins.run_pinned(name, tmp_path / name)
    assert pins.fingerprints(files) == RECORDED["runs"][name]


@pytest.mark.embedded
@pytest.mark.slow
def test_every_export_of_an_embedded_run_is_what_it_was_before_the_refactor(tmp_path):
    files = pins.run_pinned("embedded", tmp_path / "run")
    recorded = RECORDED["runs"]["embedded"]
    assert sorted(files) == sorted(recorded)
    got = tmp_path / "got"
    got.mkdir()
    for export, data in files.items():
        (got / export).write_bytes(data)
    assert compare_runs(pins.KEPT, got, files=CSV_EXPORTS) == []
    assert files["show.txt"] == (pins.KEPT / "show.txt").read_bytes()
    if pins.cpu_model() == RECORDED["cpu_model"] and pins.threads() == RECORDED["threads"]:
        assert pins.fingerprints(files) == recorded  # the same machine kind: byte for byte
