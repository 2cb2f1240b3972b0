"""Malformed API keys are refused before any request, and no key, however malformed, is shown.

A key with a newline, tab, other control character, space or non-ASCII character would otherwise
reach the HTTP layer, whose errors quote the header it could not send (h11: "Illegal header value
b'Bearer sk-...'"), and from there a failure message, the database and stderr. Servers quote keys
too, whole or masked (OpenAI's 401: "sk-abc***...wxyz").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from fakes.openai_server import FakeOpenAIServer

from debatelab.cli import main
from debatelab.errors import DebatelabError, EXIT_BAD_INPUT, RunFailed
from debatelab.llm.base import GenerateRequest, Message, Prompt
from debatelab.llm.openai_compat import load_openai
from debatelab.llm.openai_keys import key_problem, redact
from debatelab.llm.options import BackendOptions

from conftest import write_config

GOOD = "sk-GOODKEY-4b1d7e93aa55c0de"
# (what the message must name, a key with that problem): pieces around the bad character are long
# and unique, so finding any of them anywhere is a leak.
BAD_KEYS = {
    "newline": "sk-LEAKPIECEONE-8c1f\nLEAKPIECETWO-77e2",
    "trailing newline": "sk-LEAKPIECEONE-8c1f-LEAKPIECETWO-77e2\n",
    "carriage return": "sk-LEAKPIECEONE-8c1f\rLEAKPIECETWO-77e2",
    "tab": "sk-LEAKPIECEONE-8c1f\tLEAKPIECETWO-77e2",
    "space": "sk-LEAKPIECEONE-8c1f LEAKPIECETWO-77e2",
    "control": "sk-LEAKPIECEONE-8c1f\x07LEAKPIECETWO-77e2",
    "delete": "sk-LEAKPIECEONE-8c1f\x7fLEAKPIECETWO-77e2",
    "escape": "sk-LEAKPIECEONE-8c1f\x1bLEAKPIECETWO-77e2",
    "non-ASCII": "sk-LEAKPIECEONE-8c1f\u00e9LEAKPIECETWO-77e2",
    "no-break space": "sk-LEAKPIECEONE-8c1f\u00a0LEAKPIECETWO-77e2",
    "line separator": "sk-LEAKPIECEONE-8c1f\u2028LEAKPIECETWO-77e2",
    "C1 control": "sk-LEAKPIECEONE-8c1f\x85LEAKPIECETWO-77e2",
}
NAMED = {"newline": "a newline", "trailing newline": "a newline", "carriage return": "a carriage return",
         "tab": "a tab", "space": "a space", "control": "a control character", "delete": "a control character",
         "escape": "a control character", "non-ASCII": "a non-ASCII character",
         "no-break space": "a non-ASCII character", "line separator": "a non-ASCII character",
         "C1 control": "a control character"}
PIECES = ("LEAKPIECEONE", "LEAKPIECETWO", "8c1f", "77e2")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def assert_no_piece(text: str) -> None:
    found = [p for p in PIECES if p in text]
    assert not found, (found, text)


def ask() -> GenerateRequest:
    return GenerateRequest(Prompt(messages=(Message("user", "hi"),)), max_tokens=5)


@pytest.mark.parametrize("problem", sorted(BAD_KEYS))
def test_a_malformed_key_in_the_environment_is_refused_before_any_request(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", BAD_KEYS[problem])
    with pytest.raises(DebatelabError) as info:
        load_openai("m", BackendOptions(base_url=server.url))
    message = str(info.value)
    assert type(info.value) is DebatelabError and info.value.exit_code == EXIT_BAD_INPUT
    assert message.startswith("the API key in $OPENAI_API_KEY contains " + NAMED[problem])
    assert "\n" not in message and "printable ASCII without spaces" in message
    assert_no_piece(message)
    assert server.received == []


@pytest.mark.parametrize("problem", ["newline", "tab", "space", "control", "non-ASCII", "line separator"])
def test_a_malformed_key_in_the_key_file_is_refused(
    server: FakeOpenAIServer, tmp_path: Path, problem: str
) -> None:
    path = tmp_path / "key"
    path.write_text(BAD_KEYS[problem] + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    with pytest.raises(DebatelabError) as info:
        load_openai("m", BackendOptions(base_url=server.url, api_key_file=str(path)))
    message = str(info.value)
    assert message.startswith(f"the API key in API key file {path} contains {NAMED[problem]}")
    assert "\n" not in message
    assert_no_piece(message)
    assert server.received == []


def test_key_file_line_endings_are_not_part_of_the_key(server: FakeOpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "key"
    for content in (GOOD, GOOD + "\n", GOOD + "\r\n", GOOD + "\n\n"):
        path.write_bytes(content.encode())
        os.chmod(path, 0o600)
        llm = load_openai("m", BackendOptions(base_url=server.url, api_key_file=str(path), timeout=5))
        llm.generate([ask()])
        assert server.authorization == f"Bearer {GOOD}"
    path.write_text("\n" + GOOD)
    with pytest.raises(DebatelabError, match="contains a newline"):
        load_openai("m", BackendOptions(base_url=server.url, api_key_file=str(path)))
    path.write_text("")
    with pytest.raises(DebatelabError, match="is empty"):
        load_openai("m", BackendOptions(base_url=server.url, api_key_file=str(path)))


def test_key_problem_names_without_quoting() -> None:
    assert key_problem(GOOD) is None and key_problem("a!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~z") is None
    assert key_problem("ab\ncd") == "contains a newline (character 3 of 5)"
    assert key_problem("abcd ") == "contains a space (character 5 of 5)"


def test_masked_and_escaped_forms_of_the_key_are_redacted() -> None:
    key = "sk-proj-Zq8vK2mW9xR4tY7u-abcdWXYZ"
    masked = "sk-proj-" + "*" * 20 + "WXYZ"  # as OpenAI's 401 quotes it
    text = (f"Incorrect API key provided: {masked}. Header {key!r}, json \"{key}\", start sk-proj-Zq8vK2mW..., "
            "model fake-model")
    out = redact(text, key)
    assert "Zq8vK2mW" not in out and "WXYZ" not in out and "*****" not in out
    assert out.startswith("Incorrect API key provided: ***.") and out.endswith("model fake-model")
    backslashed = "sk-back\\slash-0123456789"  # printable ASCII: allowed, and escaped by repr
    assert "0123456789" not in redact(f"Illegal header value b'Bearer {backslashed!r}'", backslashed)


def test_a_401_quoting_the_key_masked_shows_none_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-MASKCHECK-5e9a2f71c3d4"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with FakeOpenAIServer(api_key="sk-the-right-one-000000") as server:
        llm = load_openai("m", BackendOptions(base_url=server.url, timeout=5, max_retries=0))
        with pytest.raises(RunFailed) as info:
            llm.generate([ask()])
    message = str(info.value)
    assert "401" in message and "Incorrect API key provided: ***." in message
    for piece in ("MASKCHECK", "5e9a2f71", "c3d4", "sk-M"):
        assert piece not in message, message


# --- through the CLI: nothing anywhere ----------------------------------------------------------

@pytest.mark.parametrize(("source", "problem"), [
    (source, problem) for source in ("env", "key file")
    for problem in ("newline", "tab", "space", "control", "non-ASCII", "trailing newline")
    if (source, problem) != ("key file", "trailing newline")  # a file's line ending is not part of its key
])
def test_cli_run_refuses_a_malformed_key_and_it_appears_nowhere(
    tmp_path: Path, bank: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    source: str, problem: str,
) -> None:
    key = BAD_KEYS[problem]
    backend: dict[str, object] = {"api_key_env": "DEBATELAB_TEST_KEY", "timeout": 1, "max_retries": 0}
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    if source == "env":
        monkeypatch.setenv("DEBATELAB_TEST_KEY", key)
    else:
        monkeypatch.delenv("DEBATELAB_TEST_KEY", raising=False)
        (secrets / "key").write_text(key + "\n", encoding="utf-8")
        os.chmod(secrets / "key", 0o600)
        backend["api_key_file"] = str(secrets / "key")
    with FakeOpenAIServer() as server:
        cfg = write_config(tmp_path / "c.yaml", model="openai:fake-model", personas=str(bank),
                           backend={"base_url": server.url, **backend})
        run_dir = tmp_path / "run"
        with pytest.raises(SystemExit) as exit_:
            sys.exit(main(["run", str(cfg), "--out", str(run_dir), "--quiet"]))
        received = server.received
        # without a bank, persona generation would be the first request
        no_bank = write_config(tmp_path / "c2.yaml", model="openai:fake-model",
                               backend={"base_url": server.url, **backend})
        assert main(["run", str(no_bank), "--out", str(tmp_path / "run2"), "--quiet"]) == EXIT_BAD_INPUT
        received += server.received
    out, err = capsys.readouterr()
    assert exit_.value.code == EXIT_BAD_INPUT
    first = err.splitlines()[0]
    assert first.startswith("error: the API key in ") and NAMED[problem] in first
    assert received == []
    assert_no_piece(out + err)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != secrets]
    for path in written:
        data = path.read_bytes().decode("utf-8", "replace")
        assert_no_piece(data)
    assert not run_dir.exists() or not any(run_dir.iterdir())


@pytest.mark.parametrize("problem", ["newline", "space", "non-ASCII"])
def test_cli_personas_refuses_a_malformed_key(
    tmp_path: Path, server: FakeOpenAIServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, problem: str,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", BAD_KEYS[problem])
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    code = main(["personas", "--model", "openai:fake-model", "--per-party", "1", "--out", str(tmp_path / "p.jsonl")])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and err.count("\n") == 1 and NAMED[problem] in err
    assert_no_piece(out + err)
    assert server.received == [] and not (tmp_path / "p.jsonl").exists()
