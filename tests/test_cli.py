"""The command line: bad input gives one line and exit code 2, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from debatelab.errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_FAILED
from debatelab.cli import main
from debatelab.config import load_config

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
def test_bad_config_is_one_line_bad_input(tmp_path, capsys, case):
    values, needle = BAD_CONFIGS[case]
    cfg = write_config(tmp_path / "c.yaml", **values)
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == EXIT_BAD_INPUT
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
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1 and needle in err


def test_not_yaml_mapping_and_corrupt_yaml(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    for name, needle in (("list.yaml", "mapping"), ("broken.yaml", "not valid YAML")):
        code, err = _run(capsys, "run", str(tmp_path / name))
        assert code == EXIT_BAD_INPUT and needle in err and len(err.splitlines()) == 1


def test_non_utf8_inputs(tmp_path, capsys, bank):
    (tmp_path / "latin1.yaml").write_bytes("model: scripted # caf\xe9\n".encode("latin-1"))
    code, err = _run(capsys, "run", str(tmp_path / "latin1.yaml"))
    assert code == EXIT_BAD_INPUT and "not UTF-8" in err
    (tmp_path / "bank.jsonl").write_bytes(b"\xff\xfe garbage")
    code, err = _run(capsys, "run", str(write_config(tmp_path / "c.yaml", personas="bank.jsonl")))
    assert code == EXIT_BAD_INPUT and "not UTF-8" in err and len(err.splitlines()) == 1


def test_bank_too_small_leaves_no_run_directory(tmp_path, capsys):
    small = make_bank(tmp_path / "small.jsonl", per_party=1)
    cfg = write_config(tmp_path / "c.yaml", personas=str(small), agents=["republican", "republican"])
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == EXIT_BAD_INPUT and "seats 2 republican" in err and not (tmp_path / "run").exists()
    cfg = write_config(tmp_path / "d.yaml", personas=str(small), agents=["republican", "democrat"], repetitions=2)
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == EXIT_BAD_INPUT and "only 1 distinct persona combination" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("target", ["dir", "/proc/no/such/bank.jsonl"])
def test_personas_unwritable_out_is_one_line(tmp_path, capsys, target):
    out = tmp_path if target == "dir" else target
    code, err = _run(capsys, "personas", "--model", "scripted", "--per-party", "1", "--out", str(out), "--force")
    assert code == EXIT_BAD_INPUT and "cannot write persona bank" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.parent.glob(f".{tmp_path.name}.*.tmp"))


def test_cli_run_and_resume_on_scripted(tmp_path, capsys, bank):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--repetitions", "2"]) == 0
    assert "2/2 debates complete" in capsys.readouterr().out
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--repetitions", "2"]) == 0
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--repetitions", "3")
    assert code == EXIT_BAD_INPUT and "different config" in err


def test_corrupt_database_is_refused(tmp_path, capsys, bank):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.sqlite").write_bytes(b"this is not a database" * 100)
    code, err = _run(capsys, "run", str(write_config(tmp_path / "c.yaml", personas=str(bank))),
                     "--out", str(tmp_path / "run"), "--quiet")
    assert code == EXIT_BAD_INPUT and "corrupt" in err


def test_console_script_and_light_import():
    out = subprocess.run([sys.executable, "-c", "import debatelab, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    script = Path(sys.executable).parent / "debatelab"  # the installed console entry point
    assert script.exists()
    res = subprocess.run([str(script), "run", "/no/such.yaml"], capture_output=True, text=True)
    assert res.returncode == EXIT_BAD_INPUT and res.stderr.strip() == "error: config file not found: /no/such.yaml"


def test_model_that_fails_to_load_leaves_no_run_directory(tmp_path, capsys, bank):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), model="hf:/no/such/model/dir")
    code, err = _run(capsys, "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == EXIT_BAD_INPUT and "cannot load model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_personas_command_writes_bank_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "bank.jsonl"
    assert main(["personas", "--model", "scripted", "--per-party", "3", "--out", str(out)]) == 0
    from debatelab.personas import load_bank

    bank = load_bank(out)
    assert len(bank) == 6 and len({p.name for p in bank}) == 6
    code, err = _run(capsys, "personas", "--model", "scripted", "--out", str(out))
    assert code == EXIT_BAD_INPUT and "--force" in err


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
    assert code == EXIT_BAD_INPUT and "no run database" in err and not (tmp_path / "r3" / "report.html").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.sqlite").write_bytes(b"not a database" * 200)
    (tmp_path / "file").write_text("x")
    for argv, needle in ((["report", str(tmp_path / "bad"), "--out", str(tmp_path / "r4")], "cannot read run database"),
                         (["report", str(out / "fig4_two_way"), "--out", str(tmp_path / "file")], "cannot write the report"),
                         (["report", str(out / "fig4_two_way"), "--out", "/proc/nope"], "cannot write the report"),
                         (["report", str(out / "fig4_two_way"), "--out", str(tmp_path / "r5"), "--overlay"], "two run")):
        code, err = _run(capsys, *argv)
        assert code == EXIT_BAD_INPUT and needle in err and len(err.splitlines()) == 1, (argv, err)


def test_report_on_a_run_without_complete_debates(tmp_path, capsys, bank):
    from debatelab.store import open_store

    store = open_store(tmp_path / "empty")  # a run that has started but finished nothing
    store.close()
    code, err = _run(capsys, "report", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    assert code == EXIT_BAD_INPUT and "no complete debate" in err and not (tmp_path / "r").exists()


# --- no traceback for any input: the last-resort handlers in cli.main -------------------------

def _raising(monkeypatch, exc: BaseException) -> None:
    """Make `debatelab topics` raise ``exc`` (main builds its parser anew, so this takes effect)."""
    import debatelab.cli as cli

    def boom(args):
        raise exc

    monkeypatch.setattr(cli, "_cmd_topics", boom)


def test_a_bug_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("DEBATELAB_DEBUG", raising=False)
    _raising(monkeypatch, RuntimeError("boom\nsecond line"))
    code, err = _run(capsys, "topics")
    assert code == EXIT_FAILED and len(err.splitlines()) == 1
    assert err.startswith("internal error: RuntimeError: boom second line (please report it")
    monkeypatch.setenv("DEBATELAB_DEBUG", "1")  # a genuine bug is never swallowed for good
    with pytest.raises(RuntimeError, match="boom"):
        main(["topics"])


@pytest.mark.parametrize("exc, code, needle", [
    (PermissionError(13, "Permission denied", "/srv/results/x.csv"), EXIT_BAD_INPUT, "error: Permission denied: /srv/results/x.csv"),
    (IsADirectoryError(21, "Is a directory", "/tmp"), EXIT_BAD_INPUT, "error: Is a directory: /tmp"),
    (OSError(28, "No space left on device", "/data/run.sqlite"), EXIT_FAILED, "error: No space left on device: /data/run.sqlite"),
    (OSError(5, "Input/output error"), EXIT_FAILED, "error: Input/output error"),
    (FileExistsError(17, "File exists", "a", None, "b"), EXIT_BAD_INPUT, "error: File exists: a -> b"),
])
def test_unanticipated_os_errors_are_one_line(capsys, monkeypatch, exc, code, needle):
    _raising(monkeypatch, exc)
    got, err = _run(capsys, "topics")
    assert got == code and err == needle


def test_database_and_memory_errors_are_one_line(capsys, monkeypatch):
    import sqlite3

    _raising(monkeypatch, sqlite3.OperationalError("database is locked"))
    assert _run(capsys, "topics") == (EXIT_FAILED, "error: database error: database is locked")
    _raising(monkeypatch, MemoryError())
    assert _run(capsys, "topics") == (EXIT_FAILED, "error: out of memory")


def test_user_text_in_a_message_cannot_break_the_line(capsys, monkeypatch):
    from debatelab.cli_io import MAX_MESSAGE, one_line
    from debatelab.errors import DebatelabError

    assert one_line("a\nb\r\nc\u2028d\x85e\x0bf\x1b[31mg\th") == "a b  c d e f\\x1b[31mg\th"
    assert len(one_line("x" * 10_000)) == MAX_MESSAGE and one_line("x" * 10_000).endswith("...")
    _raising(monkeypatch, DebatelabError("unknown topic 'a\nb' \u2029 \x00"))
    code, err = _run(capsys, "topics")
    assert code == EXIT_BAD_INPUT and err == "error: unknown topic 'a b'   \\x00"


def test_closed_stdout_is_quiet():
    script = Path(sys.executable).parent / "debatelab"
    proc = subprocess.Popen([str(script), "topics"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `debatelab topics | head -0`
    err = proc.stderr.read()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert err == b"" and proc.returncode == EXIT_BROKEN_PIPE


# --- YAML: one reader for configs, topic files and study files -------------------------------

def test_duplicate_keys_refused_in_every_yaml_file(tmp_path):
    from debatelab.errors import DebatelabError
    from debatelab.finetune.study import load_study
    from debatelab.topics import load_topic_file

    (tmp_path / "c.yaml").write_text("model: scripted\nagents: [democrat, republican]\nmodel: embedded\n")
    (tmp_path / "t.yaml").write_text("- id: a\n  name: A\n  question: Why?\n- id: b\n  name: B\n  name: C\n")
    (tmp_path / "s.yaml").write_text("model: embedded\nexperiment: x.yaml\nseeds: [1]\nseeds: [2]\n")
    for path, load, needle in ((tmp_path / "c.yaml", load_config, "duplicate key 'model' on line 3 (first on line 1)"),
                               (tmp_path / "t.yaml", load_topic_file, "duplicate key 'name' on line 6 (first on line 5)"),
                               (tmp_path / "s.yaml", load_study, "duplicate key 'seeds' on line 4 (first on line 3)")):
        with pytest.raises(DebatelabError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            load(path)


def test_anchors_and_merge_keys_still_work(tmp_path, bank):
    """Refusing duplicates and alias bombs leaves ordinary YAML alone: a merge may override."""
    path = tmp_path / "c.yaml"
    path.write_text(f"model: scripted\npersonas: {bank}\ntopics: [climate_change]\n"
                    "agents: &roster [republican, democrat, default]\n"
                    "reply: &r {max_tokens: 40, temperature: 0.5}\n"
                    "persona_generation:\n  <<: *r\n  max_tokens: 300\n")
    config = load_config(path)
    assert config.roles == ["republican", "democrat", "default"] and config.reply.max_tokens == 40
    assert config.persona_generation.max_tokens == 300 and config.persona_generation.temperature == 0.5


def test_largest_legitimate_inputs_are_accepted(tmp_path, bank):
    """The bounds leave room: every size at its maximum loads (nothing runs)."""
    topics = [{"id": f"t{i}", "name": "N" * 200, "question": "Q" * 1999 + "?", "low_label": "l" * 200,
               "positions": {"republican": "r" * 500}} for i in range(1000)]
    (tmp_path / "topics.yaml").write_text(json.dumps(topics, indent=1))  # JSON is YAML, and fast to write
    assert (tmp_path / "topics.yaml").stat().st_size < 4 * 2**20
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), topic_files=["topics.yaml"],
                       topics=[f"t{i}" for i in range(1000)], agents=["default"] * 64, rounds=15, repetitions=1,
                       seed=2**63 - 1, max_in_flight=4096, reply={"max_tokens": 8192},
                       persona_generation={"per_party": 10_000, "max_tokens": 8192, "max_attempts": 100},
                       survey={"max_tokens": 64}, executor={"workers": 1024})
    config = load_config(cfg)
    assert len(config.resolved_topics()) == 1000 and config.rounds * len(config.agents) == 960
    inline = [{"id": f"t{i}", "name": f"T{i}", "question": "Why?"} for i in range(10)]
    many = load_config(write_config(tmp_path / "d.yaml", personas=str(bank), topics=inline, rounds=100,
                                    agents=["republican", "democrat"], repetitions=5_000, seed=-2**63))
    assert many.repetitions * len(many.topics) == 50_000  # 10 million replies: the most one run may plan


def test_jsonl_and_text_readers_are_bounded(tmp_path):
    from debatelab.errors import DebatelabError
    from debatelab.readers import read_jsonl, read_text

    (tmp_path / "deep.jsonl").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DebatelabError, match="line 1 cannot be read"):
        read_jsonl(tmp_path / "deep.jsonl", "dataset")
    (tmp_path / "big.jsonl").write_text('{"a": ' + "9" * 5000 + "}\n")
    with pytest.raises(DebatelabError, match="line 1 cannot be read"):
        read_jsonl(tmp_path / "big.jsonl", "dataset")
    (tmp_path / "t.txt").write_text("x" * 101)
    with pytest.raises(DebatelabError, match="larger than 100 bytes"):
        read_text(tmp_path / "t.txt", "text", limit=100)
    with pytest.raises(DebatelabError, match="contains a NUL byte"):
        read_text(Path("a\x00b"), "text")
    assert read_text(tmp_path / "t.txt", "text", limit=101) == "x" * 101


def test_personas_takes_model_and_backend_options_from_a_config(tmp_path, server, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = write_config(tmp_path / "c.yaml", model="openai:fake-model", backend={"base_url": server.url})
    out = tmp_path / "bank.jsonl"
    assert main(["personas", "--config", str(cfg), "--per-party", "2", "--out", str(out)]) == 0
    assert "4 personas" in capsys.readouterr().out
    assert server.paths and all(p == "/v1/chat/completions" for p in server.paths)
    assert {json.loads(line)["model"] for line in out.read_text().splitlines()} == {"openai:fake-model"}


@pytest.mark.parametrize("where, value", [("reply", 1e-300), ("reply", 1e-4), ("reply", 1000.0),
                                          ("persona_generation", 1e-300)])
def test_temperatures_that_would_overflow_sampling_are_refused(tmp_path, capsys, where, value):
    cfg = write_config(tmp_path / "c.yaml", **{where: {"temperature": value}})
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: invalid config {cfg}: {where}.temperature: a temperature must be 0 (greedy) or between")
    assert not (tmp_path / "run").exists()


def test_zero_and_ordinary_temperatures_are_accepted(tmp_path):
    from debatelab.config import load_config

    for value in (0, 0.001, 0.7, 1, 100):
        assert load_config(write_config(tmp_path / "c.yaml", reply={"temperature": value})).reply.temperature == value


def test_personas_beyond_the_name_list_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    loads = []
    monkeypatch.setattr("debatelab.llm.registry.load_llm", lambda *a, **k: loads.append(a))
    assert main(["personas", "--per-party", "150", "--out", str(tmp_path / "bank.jsonl")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "needs 300 distinct names; the name list has 200 (at most 100 per party)" in err
    assert loads == [] and not (tmp_path / "bank.jsonl").exists()
