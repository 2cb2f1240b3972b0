"""Issue 12 changed seams, not behaviour: every export of the pinned seeded runs hashes as it did
before the refactor (hashes recorded by ``python tests/behaviour_pin.py --record`` on the code
before it; see that module for why an embedded run's exact hashes need the same CPU model)."""

from __future__ import annotations

import json

import pytest

import behaviour_pin as pins

RECORDED = json.loads(pins.HASHES.read_text())


@pytest.mark.parametrize("name", pins.CONFIGS)
def test_every_export_hashes_as_recorded_before_the_refactor(name, tmp_path):
    files = pins.run_pinned(name, tmp_path / name)
    recorded = RECORDED["runs"][name]
    assert sorted(files) == sorted(recorded)
    got = pins.fingerprints(name, files)
    same_machine = pins.cpu_model() == RECORDED["cpu_model"] and pins.threads() == RECORDED["threads"]
    for export, want in recorded.items():
        assert got[export]["rounded"] == want["rounded"], f"{name}/{export} differs beyond float rounding"
        if not name.startswith("embedded") or same_machine:  # scripted runs have no float kernels
            assert got[export]["sha256"] == want["sha256"], f"{name}/{export} is not byte-identical"
