"""A persona bank the tool wrote is always readable by the tool.

JSON leaves U+0085, U+2028 and U+2029 raw inside strings, and ``str.splitlines`` splits on them
(and on \\x0b, \\x0c, \\x1c-\\x1e, \\r, which JSON escapes): a story holding one used to cut its
record in two, so a paid-for bank could not be loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from debatelab.config import load_config
from debatelab.experiment import run_experiment
from debatelab.llm.base import GenerateRequest
from debatelab.llm.scripted import ScriptedLLM, default_reply
from debatelab.personas import generate_personas, load_bank, save_bank
from debatelab.types import Persona

from conftest import write_config

# Every character str.splitlines() splits on (its documented table), plus "\r\n".
BREAKS = ("\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def _personas() -> list[Persona]:
    out = []
    for i, br in enumerate(BREAKS):
        story = f"You are P{i}.{br}You grew up on a farm.{br}{br}You vote every year.{br}"
        out.append(Persona(id=f"d{i}", party="democrat" if i % 2 else "republican", name=f"P{br}{i}",
                           background=story, prompt=f"Write{br}about P{i}", model="m"))
    out.append(Persona(id="all", party="democrat", name="All", background="All: " + "x".join(BREAKS) + " end."))
    return out


def test_a_bank_with_every_line_break_character_round_trips(tmp_path: Path) -> None:
    personas = _personas()
    path = tmp_path / "bank.jsonl"
    save_bank(personas, path)
    assert load_bank(path) == personas
    text = path.read_bytes().decode("utf-8")
    # one record per line for any reader: even str.splitlines() sees exactly the records
    assert len(text.splitlines()) == len(personas) == text.count("\n")
    assert [json.loads(line)["id"] for line in text.splitlines()] == [p.id for p in personas]
    assert not any(ch in text for ch in ("\x85", "\u2028", "\u2029", "\r", "\x0b", "\x0c", "\x1c"))
    # other non-ASCII text stays readable as it was
    save_bank([Persona(id="u", party="democrat", name="Zoë", background="Café story — naïve.")], path)
    assert "Zoë" in path.read_text(encoding="utf-8")


def test_a_bank_written_raw_by_an_older_version_still_loads(tmp_path: Path) -> None:
    personas = _personas()
    path = tmp_path / "old.jsonl"
    path.write_bytes("".join(p.model_dump_json() + "\n" for p in personas).encode("utf-8"))  # the old writer
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert load_bank(path) == personas


def test_a_crlf_bank_loads(tmp_path: Path) -> None:
    personas = _personas()
    path = tmp_path / "crlf.jsonl"
    save_bank(personas, path)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert load_bank(path) == personas


def test_generated_stories_with_line_separators_survive_a_run_and_its_reuse(tmp_path: Path) -> None:
    def reply(req: GenerateRequest) -> str:
        return default_reply(req).replace(". ", ".\u2028", 1).replace(" ", "\u2029", 1) + "\x85Done."

    bank = generate_personas(ScriptedLLM(reply_fn=reply), "scripted", {"republican": 2, "democrat": 2}, seed=1)
    assert all("\u2028" in p.background and "\x85" in p.background for p in bank)
    cfg = load_config(write_config(tmp_path / "c.yaml", repetitions=2))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM(reply_fn=reply))
    written = load_bank(tmp_path / "run" / "personas.jsonl")
    assert len(written) == 4 and all("\u2028" in p.background for p in written)
    # the bank the run wrote is a valid input for the next run
    again = load_config(write_config(tmp_path / "c2.yaml", repetitions=2,
                                     personas=str(tmp_path / "run" / "personas.jsonl")))
    summary = run_experiment(again, tmp_path / "run2", llm=ScriptedLLM())
    assert summary.complete == summary.debates == 2
