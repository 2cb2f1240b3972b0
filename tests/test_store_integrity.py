"""Whose database is it, which schema, is it intact? Another program's file, one from a newer
debatelab and a damaged one are refused with one line, before anything is written to them;
``report``, ``show`` and ``load()`` refuse a damaged one instead of showing part of it."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from pathlib import Path

import pytest

from debatelab.cli import main
from debatelab.errors import DebatelabError, EXIT_BAD_INPUT

from conftest import make_bank, write_config

APP_ID = 0x44424C42  # "DBLB"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run directory) of a finished run of one debate: 6 turns, 9 surveys."""
    root = tmp_path_factory.mktemp("finished")
    cfg = write_config(root / "c.yaml", personas=str(make_bank(root / "bank.jsonl")), repetitions=1)
    assert main(["run", str(cfg), "--out", str(root / "run"), "--quiet"]) == 0
    return cfg, root / "run"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run (its WAL was checkpointed when the run closed)."""
    return Path(shutil.copytree(finished[1], tmp_path / "run"))


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def _refused(capsys, code_err: tuple[int, str], needle: str) -> None:
    code, err = code_err
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1 and err.startswith("error: cannot read run database "), err
    assert needle in err and "Traceback" not in err, err


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _run_cmd(cfg: Path, run: Path) -> list[str]:
    return ["run", str(cfg), "--out", str(run), "--quiet"]


def _foreign(path: Path, wal: bool) -> None:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")  # even a table of our name
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    db.executemany("INSERT INTO invoices (amount) VALUES (?)", [(9.5,), (12.0,)])
    db.commit()
    db.close()  # for WAL: the last close checkpoints and removes -wal and -shm


@pytest.mark.parametrize("kind", ["another app's sqlite", "another app's sqlite in WAL mode", "not sqlite"])
def test_foreign_file_is_refused_and_left_byte_identical(tmp_path, bank, capsys, kind):
    run = tmp_path / "run"
    run.mkdir()
    if kind == "not sqlite":
        (run / "run.sqlite").write_bytes(b"my thesis, chapter 1\n" * 300)
        needle = "not an SQLite database"
    else:
        _foreign(run / "run.sqlite", wal="WAL" in kind)
        needle = "not a debatelab run database (its tables: invoices" + (", meta)" if "WAL" in kind else ")")
    before = _files(run)
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank))
    _refused(capsys, _cli(capsys, *_run_cmd(cfg, run)), needle)
    assert _files(run) == before  # not a byte written, and no -wal, -shm or -journal beside it
    for argv in (["show", str(run)], ["report", str(run), "--out", str(tmp_path / "report")]):
        _refused(capsys, _cli(capsys, *argv), needle)
    assert _files(run) == before and not (tmp_path / "report").exists()


def test_database_from_a_newer_schema_is_refused_untouched(finished, run, capsys):
    db = sqlite3.connect(run / "run.sqlite")
    db.execute("INSERT INTO _migrations VALUES (99, '_m099_from_the_future', 0)")
    db.commit()
    db.close()
    before = _files(run)
    _refused(capsys, _cli(capsys, *_run_cmd(finished[0], run)), "written by a newer debatelab (schema 99")
    assert _files(run) == before


def _drop_last_turn_cell(path: Path) -> None:
    """Damage the turns table's page the way a torn or flipped write can: its header's cell count
    says 5 where 6 cells are stored. Plain queries then silently see 5 of the 6 turns."""
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'turns'").fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    offset = (root - 1) * page_size + (100 if root == 1 else 0)
    assert data[offset] == 0x0D  # a table leaf page
    cells = struct.unpack(">H", data[offset + 3:offset + 5])[0]
    assert cells == 6
    data[offset + 3:offset + 5] = struct.pack(">H", cells - 1)
    path.write_bytes(bytes(data))


def test_damaged_page_is_refused_by_run_show_report_and_load(finished, run, tmp_path, capsys):
    _drop_last_turn_cell(run / "run.sqlite")
    before = _files(run)
    _refused(capsys, _cli(capsys, *_run_cmd(finished[0], run)), "it is corrupt (SQLite integrity check: ")
    _refused(capsys, _cli(capsys, "report", str(run), "--out", str(tmp_path / "r")), "it is corrupt")
    import debatelab

    with pytest.raises(DebatelabError, match="it is corrupt"):
        debatelab.load(run)
    _refused(capsys, _cli(capsys, "show", str(run)), "it is corrupt")
    assert _files(run) == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("column", ["spec_json", "probs_json", "probs_json shape"])
def test_bad_json_in_a_row_is_refused_everywhere(finished, run, tmp_path, capsys, column):
    db = sqlite3.connect(run / "run.sqlite")
    if column == "spec_json":
        db.execute("UPDATE debates SET spec_json = '{\"topic\": {\"name\": \"clim' ")
    elif column == "probs_json":
        db.execute("UPDATE surveys SET probs_json = '[0.1, 0.2,' WHERE rowid = 3")
    else:
        db.execute("UPDATE surveys SET probs_json = '[0.5, 0.5]' WHERE rowid = 3")
    db.commit()
    db.close()
    before = _files(run)
    table = column.split()[0].replace("spec_json", "debates.spec_json").replace("probs_json", "surveys.probs_json")
    needle = f"{table} of "
    _refused(capsys, _cli(capsys, *_run_cmd(finished[0], run)), needle)
    _refused(capsys, _cli(capsys, "report", str(run), "--out", str(tmp_path / "r")), needle)
    _refused(capsys, _cli(capsys, "show", str(run)), needle)
    assert _files(run) == before


def test_run_database_is_marked_and_a_database_from_before_the_marker_still_resumes(finished, run, capsys):
    db = sqlite3.connect(run / "run.sqlite")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APP_ID
    schema = db.execute("SELECT MAX(id) FROM _migrations").fetchone()[0]
    assert db.execute("PRAGMA user_version").fetchone()[0] == schema
    db.execute("PRAGMA application_id = 0")  # what every debatelab before the marker wrote
    db.commit()
    db.close()
    exports = {n: (run / n).read_bytes() for n in ("debates.csv", "turns.csv", "attitudes.csv")}
    assert main(_run_cmd(finished[0], run)) == 0
    db = sqlite3.connect(run / "run.sqlite")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APP_ID  # marked now
    db.close()
    assert {n: (run / n).read_bytes() for n in exports} == exports


def test_database_killed_before_its_first_migration_is_taken_over(tmp_path, bank, capsys):
    run = tmp_path / "run"
    run.mkdir()
    db = sqlite3.connect(run / "run.sqlite")  # older versions made this table outside a transaction
    db.execute("CREATE TABLE _migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    db.commit()
    db.close()
    assert main(_run_cmd(write_config(tmp_path / "c.yaml", personas=str(bank)), run)) == 0


def test_run_database_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, capsys, finished):
    cfg, _ = finished
    target = tmp_path / "elsewhere.sqlite"
    target.write_bytes(b"")
    run_dir = tmp_path / "new"
    run_dir.mkdir()
    (run_dir / "run.sqlite").symlink_to(target)
    code, err = _cli(capsys, "run", str(cfg), "--out", str(run_dir), "--quiet")
    assert code == EXIT_BAD_INPUT and "symbolic link" in err and len(err.splitlines()) == 1
    assert target.read_bytes() == b""


def test_another_configs_run_is_refused_read_only_before_the_model_loads(run, finished, tmp_path, capsys,
                                                                         monkeypatch):
    cfg, _ = finished
    other = write_config(tmp_path / "other.yaml", personas=str(make_bank(tmp_path / "b.jsonl")), repetitions=1,
                         rounds=3)
    con = sqlite3.connect(run / "run.sqlite")
    con.execute("DELETE FROM _migrations WHERE id = 3")  # as if from before migration 3 ...
    con.commit()
    con.close()
    before = (run / "run.sqlite").read_bytes()
    loads = []
    monkeypatch.setattr("debatelab.executor.load_llm", lambda *a, **k: loads.append(a))
    code, err = _cli(capsys, "run", str(other), "--out", str(run), "--quiet")
    assert code == EXIT_BAD_INPUT and "different config" in err
    assert loads == [] and (run / "run.sqlite").read_bytes() == before  # ... and still not migrated


def test_a_run_from_before_the_source_column_is_still_shown(run, capsys):
    con = sqlite3.connect(run / "run.sqlite")
    con.execute("ALTER TABLE surveys DROP COLUMN source")  # the schema of the previous release
    con.execute("DELETE FROM _migrations WHERE id = 3")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    assert main(["show", str(run)]) == 0
    assert "invalid (greedy): 0/9 surveys" in capsys.readouterr().out
