from __future__ import annotations

import json

import pytest

from debatelab.config import load_config
from debatelab.errors import DebatelabError, RunFailed
from debatelab.experiment import run_experiment
from debatelab.llm.base import GenerateRequest
from debatelab.llm.scripted import ScriptedLLM, default_reply
from debatelab.personas import clean_background, generate_personas, load_bank, save_bank

from conftest import make_bank, write_config


def test_generated_bank_has_distinct_names_and_records_provenance(tmp_path):
    llm = ScriptedLLM()
    bank = generate_personas(llm, "scripted", {"republican": 5, "democrat": 5}, seed=3)
    assert [p.party for p in bank] == ["republican"] * 5 + ["democrat"] * 5
    assert len({p.name for p in bank}) == 10
    assert all(p.model == "scripted" and p.seed is not None and p.prompt for p in bank)
    assert all(p.name in p.prompt for p in bank)
    # one batched call, sampled at T=1.0, with each party's positions in its meta-prompt
    assert len(llm.generate_calls) == 1 and all(r.temperature == 1.0 for r in llm.generate_calls[0])
    rep = next(p for p in bank if p.party == "republican")
    assert "Illegal immigration is a very big problem" in rep.prompt
    assert "Climate change is not a problem at all" in rep.prompt
    save_bank(bank, tmp_path / "b.jsonl")
    assert load_bank(tmp_path / "b.jsonl") == bank


def test_malformed_outputs_are_regenerated_a_bounded_number_of_times():
    calls = []

    def flaky(req: GenerateRequest) -> str:
        calls.append(req.seed)
        return "" if len(calls) <= 3 else default_reply(req)

    bank = generate_personas(ScriptedLLM(reply_fn=flaky), "scripted", {"republican": 2, "democrat": 2}, seed=0)
    assert len(bank) == 4
    assert len(calls) == 4 + 3  # the three empty outputs were regenerated once each
    with pytest.raises(RunFailed, match="after 2 attempts"):
        generate_personas(ScriptedLLM(reply_fn=lambda r: "<|im_end|>"), "m", {"democrat": 1}, seed=0, max_attempts=2)


@pytest.mark.parametrize("text, ok", [("", False), ("too short", False), ("<|im_start|>" + " word" * 40, False),
                                      ("You are Ann. " + "She works hard. " * 10, True)])
def test_clean_background(text, ok):
    assert (clean_background(text, 20) is not None) == ok


def test_bank_errors_are_one_line(tmp_path):
    path = make_bank(tmp_path / "b.jsonl", per_party=2)
    lines = path.read_text().splitlines()
    (tmp_path / "dup.jsonl").write_text("\n".join(lines + [lines[0]]))
    with pytest.raises(DebatelabError, match="duplicate persona ids"):
        load_bank(tmp_path / "dup.jsonl")
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DebatelabError, match="line 2 is not valid JSON"):
        load_bank(tmp_path / "bad.jsonl")
    with pytest.raises(DebatelabError, match="not found"):
        load_bank(tmp_path / "missing.jsonl")


def test_run_without_bank_generates_and_resumes_personas(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", repetitions=2))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    bank = [json.loads(line) for line in (tmp_path / "run/personas.jsonl").read_text().splitlines()]
    assert sorted(p["party"] for p in bank) == ["democrat"] * 2 + ["republican"] * 2
    again = ScriptedLLM()
    run_experiment(cfg, tmp_path / "run", llm=again)
    assert again.generate_calls == []  # personas come from the database, not regenerated


def test_a_request_that_failed_for_good_is_reported_as_such_not_as_malformed():
    from debatelab.llm.base import Completion

    class HalfFailing(ScriptedLLM):
        def generate(self, requests):
            outs = super().generate(requests)
            return [Completion("", error="gave up after 3 attempt(s) in 1.0s: InternalServerError: 503")
                    if i == 1 else o for i, o in enumerate(outs)]

    committed = []
    llm = HalfFailing()
    with pytest.raises(RunFailed) as info:
        generate_personas(llm, "m", {"republican": 2, "democrat": 1}, seed=0, on_batch=committed.extend)
    message = str(info.value)
    assert "malformed" not in message and "1 request(s)" in message and "gave up after 3 attempt(s)" in message
    assert len(committed) == 2  # the wave's good personas were kept for the resume
    assert len(llm.generate_calls) == 1  # the backend already retried: no second wave


def test_a_bank_line_nested_too_deeply_is_one_clear_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DebatelabError, match="line 1 cannot be read \\(nested too deeply"):
        load_bank(path)
