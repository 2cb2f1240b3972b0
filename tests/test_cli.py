"""The command line: bad input gives one line and exit code 2, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from debatelab.cli import main

from conftest import make_bank, write_config


def _run(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(list(argv)))
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


BAD_CONFIGS = {
    "unknown key": ({"colour": "red"}, "colour"),
    "wrong type": ({"rounds": "three"}, "rounds"),
    "zero repetitions": ({"repetitions": 0}, "repetitions"),
    "negative rounds": ({"rounds": -1}, "rounds"),
    "one agent": ({"agents": ["democrat"]}, "agents"),
    "unknown party": ({"agents": ["democrat", "green"]}, "green"),
    "unknown topic": ({"topics": ["taxes"]}, "taxes"),
    "empty topic question": ({"topics": [{"id": "x", "name": "X", "question": "  "}]}, "question"),
    "bad model": ({"model": "gpt4"}, "unknown model"),
    "missing personas": ({"personas": "nope.jsonl"}, "not found"),
    "bad survey method": ({"survey": {"method": "vibes"}}, "method"),
    "personas is a directory": ({"personas": "."}, "is a directory"),
    "empty personas path": ({"personas": ""}, "must not be empty"),
    "personas not a path": ({"personas": 5}, "personas"),
    "topic file is a directory": ({"topic_files": ["."]}, "is a directory"),
    "missing topic file": ({"topic_files": ["nope.yaml"]}, "topic file not found"),
    "too many repetitions for names": ({"repetitions": 150}, "distinct agent names"),
    "unknown backend option": ({"backend": {"turbo": True}}, "turbo"),
    "temperature negative": ({"reply": {"temperature": -1}}, "temperature"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_one_line_exit_2(tmp_path, capsys, case):
    values, needle = BAD_CONFIGS[case]
    cfg = write_config(tmp_path / "c.yaml", **values)
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written, nothing claimed


@pytest.mark.parametrize("argv, needle", [
    (["run", "missing.yaml"], "not found"),
    (["run", "{cfg}", "--repetitions", "many"], "whole number"),
    (["run", "{cfg}", "--repetitions", "0"], "at least 1"),
    (["fly"], "invalid choice"),
])
def test_bad_cli_values(tmp_path, capsys, argv, needle):
    cfg = write_config(tmp_path / "c.yaml")
    code, err = _run(capsys, *[a.replace("{cfg}", str(cfg)) for a in argv])
    assert code == 2 and len(err.splitlines()) == 1 and needle in err


def test_not_yaml_mapping_and_corrupt_yaml(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    for name, needle in (("list.yaml", "mapping"), ("broken.yaml", "not valid YAML")):
        code, err = _run(capsys, "run", str(tmp_path / name))
        assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_non_utf8_inputs(tmp_path, capsys, bank):
    (tmp_path / "latin1.yaml").write_bytes("model: scripted # caf\xe9\n".encode("latin-1"))
    code, err = _run(capsys, "run", str(tmp_path / "latin1.yaml"))
    assert code == 2 and "not UTF-8" in err
    (tmp_path / "bank.jsonl").write_bytes(b"\xff\xfe garbage")
    code, err = _run(capsys, "run", str(write_config(tmp_path / "c.yaml", personas="bank.jsonl")))
    assert code == 2 and "not UTF-8" in err and len(err.splitlines()) == 1


def test_bank_too_small_leaves_no_run_directory(tmp_path, capsys):
    small = make_bank(tmp_path / "small.jsonl", per_party=1)
    cfg = write_config(tmp_path / "c.yaml", personas=str(small), agents=["republican", "republican"])
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "seats 2 republican" in err and not (tmp_path / "run").exists()
    cfg = write_config(tmp_path / "d.yaml", personas=str(small), agents=["republican", "democrat"], repetitions=2)
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "only 1 distinct persona combination" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("target", ["dir", "/proc/no/such/bank.jsonl"])
def test_personas_unwritable_out_is_one_line(tmp_path, capsys, target):
    out = tmp_path if target == "dir" else target
    code, err = _run(capsys, "personas", "--model", "scripted", "--per-party", "1", "--out", str(out), "--force")
    assert code == 2 and "cannot write persona bank" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.parent.glob(f".{tmp_path.name}.*.tmp"))


def test_cli_run_and_resume_on_scripted(tmp_path, capsys, bank):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--repetitions", "2"]) == 0
    assert "2/2 debates complete" in capsys.readouterr().out
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--repetitions", "2"]) == 0
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--repetitions", "3")
    assert code == 2 and "different config" in err


def test_corrupt_database_is_refused(tmp_path, capsys, bank):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.sqlite").write_bytes(b"this is not a database" * 100)
    code, err = _run(capsys, "run", str(write_config(tmp_path / "c.yaml", personas=str(bank))),
                     "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "corrupt" in err


def test_console_script_and_light_import():
    out = subprocess.run([sys.executable, "-c", "import debatelab, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    script = Path(sys.executable).parent / "debatelab"  # the installed console entry point
    assert script.exists()
    res = subprocess.run([str(script), "run", "/no/such.yaml"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip() == "error: config file not found: /no/such.yaml"


def test_model_that_fails_to_load_leaves_no_run_directory(tmp_path, capsys, bank):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), model="hf:/no/such/model/dir")
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "cannot load model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_personas_command_writes_bank_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "bank.jsonl"
    assert main(["personas", "--model", "scripted", "--per-party", "3", "--out", str(out)]) == 0
    from debatelab.personas import load_bank

    bank = load_bank(out)
    assert len(bank) == 6 and len({p.name for p in bank}) == 6
    code, err = _run(capsys, "personas", "--model", "scripted", "--out", str(out))
    assert code == 2 and "--force" in err


def test_reproduce_and_report_commands(tmp_path, capsys):
    presets = Path(__file__).resolve().parents[1] / "experiments" / "paper"
    out = tmp_path / "paper"
    assert main(["reproduce", "fig3_three_way", "fig4_two_way", "--model", "scripted", "--repetitions", "2",
                 "--out", str(out), "--preset-dir", str(presets), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "fig3_three_way: 8/8 debates complete" in printed and "report ->" in printed
    html = (out / "report" / "report.html").read_text()
    assert "Content-Security-Policy" in html and (out / "report" / "summary.csv").exists()
    assert main(["report", str(out / "fig4_two_way"), "--out", str(tmp_path / "r2"),
                 "--reference", str(out / "fig3_three_way")]) == 0
    assert (tmp_path / "r2" / "report.html").exists()
    code, err = _run(capsys, "report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r3"))
    assert code == 2 and "no run database" in err and not (tmp_path / "r3" / "report.html").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.sqlite").write_bytes(b"not a database" * 200)
    (tmp_path / "file").write_text("x")
    for argv, needle in ((["report", str(tmp_path / "bad"), "--out", str(tmp_path / "r4")], "cannot read run database"),
                         (["report", str(out / "fig4_two_way"), "--out", str(tmp_path / "file")], "cannot write the report"),
                         (["report", str(out / "fig4_two_way"), "--out", "/proc/nope"], "cannot write the report"),
                         (["report", str(out / "fig4_two_way"), "--out", str(tmp_path / "r5"), "--overlay"], "two run")):
        code, err = _run(capsys, *argv)
        assert code == 2 and needle in err and len(err.splitlines()) == 1, (argv, err)


def test_report_on_a_run_without_complete_debates(tmp_path, capsys, bank):
    from debatelab.store import open_store

    store = open_store(tmp_path / "empty")  # a run that has started but finished nothing
    store.close()
    code, err = _run(capsys, "report", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    assert code == 2 and "no complete debate" in err and not (tmp_path / "r").exists()
