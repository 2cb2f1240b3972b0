"""The store's read API is the only reader of a run database: its typed rows are exactly what the
CSV exports hold (one failed debate included), its DataFrame views read a database from before
migration 3 (no ``surveys.source``), and ``read_transcript`` reads without writing."""

from __future__ import annotations

import csv
import shutil
import sqlite3
from pathlib import Path

import pytest

from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.export import ATTITUDE_COLUMNS, DEBATE_COLUMNS, TURN_COLUMNS
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.planning import plan_debates
from debatelab.store import (AttitudeRow, DebateRow, TurnRow, attitude_rows, debate_rows, is_database_error,
                             open_store, read_transcript, turn_rows)
from debatelab.store.views import read_views

from conftest import make_bank, write_config
from test_reliability import FlakyLLM


@pytest.fixture(scope="module")
def failed_once(tmp_path_factory) -> Path:
    """A run of 3 debates whose first debate failed once, then resumed to completion, so
    debates.csv has a failure count and every table has rows."""
    root = tmp_path_factory.mktemp("read")
    bank = make_bank(root / "bank.jsonl")
    cfg = load_config(write_config(root / "c.yaml", personas=str(bank), repetitions=3))
    first = plan_debates(cfg, load_bank(bank), ScriptedLLM().identity())[0]
    run = root / "run"
    summary = run_experiment(cfg, run, llm=FlakyLLM({first.agents[0].name}))
    assert summary.failed == 1
    assert run_experiment(cfg, run, llm=ScriptedLLM()).complete == 3
    return run


def _csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _cells(rows: list[tuple[object, ...]]) -> list[list[str]]:
    return [["" if v is None else str(v) for v in row] for row in rows]  # what csv.writer writes


def test_row_fields_are_the_export_columns():
    assert DebateRow._fields == DEBATE_COLUMNS
    assert TurnRow._fields == TURN_COLUMNS
    at = AttitudeRow._fields.index("probs")  # the distribution's eleven columns stand in its place
    probs = tuple(f"p{i}" for i in range(11))
    assert AttitudeRow._fields[:at] + probs + AttitudeRow._fields[at + 1:] == ATTITUDE_COLUMNS


def test_typed_rows_are_exactly_what_the_csvs_hold(failed_once):
    store = open_store(failed_once)
    try:
        debates, turns, attitudes = list(debate_rows(store)), list(turn_rows(store)), list(attitude_rows(store))
    finally:
        store.close()
    assert [r.failures for r in debates].count(0) == 2 and all(r.status == "complete" for r in debates)
    assert all(isinstance(r.valid, bool) and len(r.probs) == 11 for r in attitudes)
    assert _csv(failed_once / "debates.csv") == [list(DEBATE_COLUMNS), *_cells(debates)]
    assert _csv(failed_once / "turns.csv") == [list(TURN_COLUMNS), *_cells(turns)]
    flat = [(*r[:r._fields.index("probs")], *r.probs, r.prompt_sha) for r in attitudes]
    assert _csv(failed_once / "attitudes.csv") == [list(ATTITUDE_COLUMNS), *_cells(flat)]


def test_read_transcript_holds_every_turn_and_survey_and_writes_nothing(failed_once, tmp_path):
    run = Path(shutil.copytree(failed_once, tmp_path / "run"))
    before = (run / "run.sqlite").read_bytes()
    transcript = read_transcript(run)
    turns = _csv(run / "turns.csv")[1:]
    assert transcript["turns"] == {(r[0], int(r[3])): (r[7], int(r[8])) for r in turns}
    assert len(transcript["surveys"]) == len(_csv(run / "attitudes.csv")) - 1 == 27
    assert (run / "run.sqlite").read_bytes() == before


def _drop_source_column(run: Path) -> None:
    con = sqlite3.connect(run / "run.sqlite")
    con.execute("ALTER TABLE surveys DROP COLUMN source")  # the schema before migration 3
    con.execute("DELETE FROM _migrations WHERE id = 3")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()


def test_views_of_a_database_from_before_migration_3_still_load(failed_once, tmp_path):
    current = read_views(failed_once)
    run = Path(shutil.copytree(failed_once, tmp_path / "run"))
    _drop_source_column(run)
    old = read_views(run)
    assert list(old.surveys.columns) == list(current.surveys.columns)
    assert old.surveys["source"].isna().all() and current.surveys["source"].notna().all()
    same = [c for c in current.surveys.columns if c != "source"]
    assert old.surveys[same].equals(current.surveys[same])
    assert old.meta == current.meta and old.meta["config"]["repetitions"] == 3
    for name in ("debates", "agents", "turns"):
        assert old.frames()[name].equals(current.frames()[name])


def test_views_refuse_a_run_directory_without_a_database(tmp_path):
    with pytest.raises(DebatelabError, match="no run database"):
        read_views(tmp_path)


def test_database_errors_are_recognised_by_the_store_only():
    assert is_database_error(sqlite3.OperationalError("database is locked"))
    assert not is_database_error(OSError("disk"))
    assert not is_database_error(DebatelabError("bad input"))
