"""Issue 17: every turn and survey stores the hash of the exact text its model conditioned on
(recomputed here independently, on the scripted backend and on a tiny HF model), hashes survive
a crash and resume, a schema-4 database migrates with its old rows NULL, the exports and frames
carry the column, two runs compare with ``prompt_identity``, and the run meta, summary and report
say what each model conditions on."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from debatelab.analysis import load, prompt_identity
from debatelab.config import ExperimentConfig, load_config
from debatelab.experiment import conditioning_lines, run_experiment
from debatelab.llm.base import Conditioning, Prompt, Purpose, prompt_sha
from debatelab.llm.scripted import ScriptedLLM
from debatelab.prompts import reply_prompt, survey_prompt
from debatelab.store import APPLICATION_ID, MIGRATIONS
from debatelab.store.views import read_views
from debatelab.types import Agent, Topic, Turn

from conftest import make_bank, write_config
from test_runner import CrashingLLM, _Crash


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _expected_hashes(run: Path, config: ExperimentConfig, render) -> tuple[dict, dict]:
    """Every turn's and survey's hash recomputed from the stored transcript: ``render(prompt)``
    is the text the backend reads (one text for both survey requests on these backends)."""
    views = read_views(run)
    turns, surveys = {}, {}
    for spec in _specs(run):
        agents = [Agent(**a) for a in spec["agents"]]
        topic = Topic(**spec["topic"])
        said = views.turns[views.turns["debate_id"] == spec["debate_id"]].sort_values("iteration")
        history = [Turn(iteration=r.iteration, agent_index=r.agent_index, text=r.text) for r in said.itertuples()]
        for t in history:
            before = [h for h in history if h.iteration < t.iteration]
            turns[(spec["debate_id"], t.iteration)] = prompt_sha(render(reply_prompt(agents, t.agent_index, topic,
                                                                                       before)))
        asked = views.surveys[views.surveys["debate_id"] == spec["debate_id"]]
        for s in asked.itertuples():
            before = [h for h in history if h.iteration <= s.iteration]
            prompt = survey_prompt(agents, s.agent_index, topic, before, config.survey.scale_spec)
            surveys[(spec["debate_id"], s.iteration, s.agent_index)] = prompt_sha(render(prompt))
    return turns, surveys


def _specs(run: Path) -> list[dict]:
    db = sqlite3.connect(run / "run.sqlite")
    try:
        return [json.loads(row[0]) for row in db.execute("SELECT spec_json FROM debates ORDER BY rowid")]
    finally:
        db.close()


def _stored_hashes(run: Path) -> tuple[dict, dict]:
    views = read_views(run)
    turns = {(r.debate_id, r.iteration): r.prompt_sha for r in views.turns.itertuples()}
    surveys = {(r.debate_id, r.iteration, r.agent_index): r.prompt_sha for r in views.surveys.itertuples()}
    return turns, surveys


def test_every_turn_and_survey_of_a_scripted_run_stores_the_hash_of_its_prompt(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    stored = _stored_hashes(tmp_path / "run")
    assert len(stored[0]) == 3 * 6 and len(stored[1]) == 3 * 9
    assert stored == _expected_hashes(tmp_path / "run", cfg, Prompt.flat_text)
    assert all(len(h) == 16 for table in stored for h in table.values())
    # the exports and the analysis frames carry the same hashes, in the last column
    turns, attitudes = _csv(tmp_path / "run" / "turns.csv"), _csv(tmp_path / "run" / "attitudes.csv")
    assert list(turns[0])[-1] == list(attitudes[0])[-1] == "prompt_sha"
    assert {(r["debate_id"], int(r["iteration"])): r["prompt_sha"] for r in turns} == stored[0]
    assert {(r["debate_id"], int(r["iteration"]), int(r["agent_index"])): r["prompt_sha"]
            for r in attitudes} == stored[1]
    data = load(tmp_path / "run")
    assert data.turns["prompt_sha"].notna().all() and data.surveys["prompt_sha"].notna().all()


def test_hashes_are_not_part_of_debate_ids(tmp_path, bank):
    """The same config on a backend that renders prompts differently: other hashes, same debates."""
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
    run_experiment(cfg, tmp_path / "a", llm=ScriptedLLM())
    run_experiment(cfg, tmp_path / "b", llm=_Rendering())
    a, b = read_views(tmp_path / "a"), read_views(tmp_path / "b")
    assert list(a.debates["debate_id"]) == list(b.debates["debate_id"])
    assert not set(a.turns["prompt_sha"]) & set(b.turns["prompt_sha"])


class _Rendering(ScriptedLLM):
    """A scripted model behind a 'server' that renders the chat itself and cannot prefill."""

    def conditioning(self, prompt: Prompt, purpose: Purpose = "generate") -> Conditioning:
        text = json.dumps([m.as_dict() for m in prompt.messages]) + purpose
        return Conditioning(text, False, "the server's chat template; the prefix asked for by an instruction")


def test_a_survey_hashes_both_of_its_requests_when_their_texts_differ(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=1))
    run_experiment(cfg, tmp_path / "run", llm=_Rendering())
    spec = _specs(tmp_path / "run")[0]
    prompt = survey_prompt([Agent(**a) for a in spec["agents"]], 0, Topic(**spec["topic"]), [])
    messages = json.dumps([m.as_dict() for m in prompt.messages])
    stored = _stored_hashes(tmp_path / "run")[1][(spec["debate_id"], 0, 0)]
    assert stored == prompt_sha(messages + "generate", messages + "score") != prompt_sha(messages + "score")


def test_a_tiny_hf_model_stores_the_hash_of_its_rendered_chat_template(tmp_path, bank, tiny_model_dir):
    from debatelab.llm import BackendOptions, load_llm

    model = f"hf:{tiny_model_dir}"
    cfg = load_config(write_config(tmp_path / "c.yaml", model=model, personas=str(bank), rounds=1,
                                   repetitions=1, reply={"max_tokens": 4}, backend={"threads": 1}))
    summary = run_experiment(cfg, tmp_path / "run")
    backend = load_llm(model, BackendOptions(threads=1))
    rendered = _expected_hashes(tmp_path / "run", cfg, backend.render)
    assert _stored_hashes(tmp_path / "run") == rendered
    assert rendered != _expected_hashes(tmp_path / "run", cfg, Prompt.flat_text)  # the template, not flat text
    entry = summary.conditioning[""]
    assert entry["model"] == model and entry["exact"] is True and "chat template" in entry["survey"]
    assert read_views(tmp_path / "run").meta["conditioning"] == summary.conditioning


def test_a_crashed_run_resumes_with_every_hash_as_an_uninterrupted_run_has_it(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), max_in_flight=2,
                                   admission="together"))  # the crash lands after the first replies
    run_experiment(cfg, tmp_path / "clean", llm=ScriptedLLM())
    with pytest.raises(_Crash):
        run_experiment(cfg, tmp_path / "run", llm=CrashingLLM(4))
    before = _stored_hashes(tmp_path / "run")
    assert before[0] and before[1]  # the crash left committed rows
    run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM())
    assert _stored_hashes(tmp_path / "run") == _stored_hashes(tmp_path / "clean")
    for name in ("turns.csv", "attitudes.csv"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def _schema_4_copy(source: Path, run: Path) -> None:
    """``source``'s rows in a database made by migrations 1-4 only, as a release before issue 17
    wrote it (no prompt_sha columns, no conditioning meta)."""
    run.mkdir()
    db = sqlite3.connect(run / "run.sqlite", isolation_level=None)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("ATTACH DATABASE ? AS src", (str(source / "run.sqlite"),))
    db.execute("BEGIN")
    db.execute("CREATE TABLE _migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    for number, migration in enumerate(MIGRATIONS[:4], start=1):
        migration(db)
        db.execute("INSERT INTO _migrations VALUES (?, ?, 0)", (number, migration.__name__))
    for table in ("meta", "personas", "debates", "agents", "turns", "surveys", "failures", "stances"):
        columns = ", ".join(row[1] for row in db.execute(f"PRAGMA main.table_info({table})"))
        db.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM src.{table}")
    db.execute("DELETE FROM main.meta WHERE key = 'conditioning'")
    db.execute("PRAGMA user_version = 4")
    db.execute("COMMIT")
    db.close()


def test_a_schema_4_run_reads_with_null_hashes_and_resumes_into_schema_5(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), max_in_flight=2,
                                   admission="together"))  # the crash lands after the first replies
    with pytest.raises(_Crash):
        run_experiment(cfg, tmp_path / "crashed", llm=CrashingLLM(4))
    _schema_4_copy(tmp_path / "crashed", tmp_path / "old")
    old = read_views(tmp_path / "old")  # read-only: not migrated
    assert len(old.turns) and old.turns["prompt_sha"].isna().all() and old.surveys["prompt_sha"].isna().all()
    assert "conditioning" not in old.meta
    old_turns, old_surveys = len(old.turns), len(old.surveys)
    run_experiment(cfg, tmp_path / "old", llm=ScriptedLLM())
    db = sqlite3.connect(tmp_path / "old" / "run.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 6
    counts = [db.execute(f"SELECT COUNT(*) - COUNT(prompt_sha), COUNT(prompt_sha) FROM {t}").fetchone()
              for t in ("turns", "surveys")]
    db.close()
    assert counts == [(old_turns, 3 * 6 - old_turns), (old_surveys, 3 * 9 - old_surveys)]
    rows = _csv(tmp_path / "old" / "turns.csv")
    assert sum(r["prompt_sha"] == "" for r in rows) == old_turns
    assert prompt_identity(tmp_path / "old", tmp_path / "crashed")["turns"]["unhashed"] == old_turns


def test_two_runs_of_one_config_have_identical_prompts(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank)))
    run_experiment(cfg, tmp_path / "a", llm=ScriptedLLM())
    run_experiment(cfg, tmp_path / "b", llm=ScriptedLLM())
    same = prompt_identity(tmp_path / "a", tmp_path / "b")
    assert same == {"turns": {"matched": 18, "identical": 18, "differing": 0, "unhashed": 0, "missing": 0},
                    "surveys": {"matched": 27, "identical": 27, "differing": 0, "unhashed": 0, "missing": 0}}


def test_other_personas_are_other_prompts(tmp_path, bank):
    run_experiment(load_config(write_config(tmp_path / "a.yaml", personas=str(bank))), tmp_path / "a",
                   llm=ScriptedLLM())
    other = make_bank(tmp_path / "other.jsonl")
    other.write_text(other.read_text().replace("from town", "from the city of"))
    run_experiment(load_config(write_config(tmp_path / "b.yaml", personas=str(other))), tmp_path / "b",
                   llm=ScriptedLLM())
    diff = prompt_identity(tmp_path / "a", tmp_path / "b")
    assert diff["surveys"]["matched"] == 27 and diff["surveys"]["differing"] > 0
    assert diff["turns"]["differing"] > 0 and diff["turns"]["missing"] == 0


def test_the_run_states_what_each_model_conditions_on(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=1,
                                   agents=["republican", {"role": "democrat", "model": "scripted:blue"}, "default"]))
    summary = run_experiment(cfg, tmp_path / "run", llm=ScriptedLLM(), seat_llms={"scripted:blue": _Rendering()})
    assert list(summary.conditioning) == ["", "scripted:blue"]
    assert read_views(tmp_path / "run").meta["conditioning"] == summary.conditioning
    lines = conditioning_lines(summary.conditioning)
    assert lines[0] == ("conditioning (scripted): replies: flat text, no chat template; the assistant prefix "
                        "appended; surveys: flat text, no chat template; the assistant prefix appended")
    assert lines[1].startswith("conditioning (scripted:blue): replies: the server's chat template")
    assert lines[2].startswith("WARNING: scripted:blue: the server renders the chat template, so prompt hashes "
                               "identify requests, not tokens")
    assert "could not be prefilled" in lines[2] and len(lines) == 3


def test_the_report_shows_the_conditioning_statement(tmp_path, bank):
    from debatelab.analysis.report import build_report

    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=1))
    run_experiment(cfg, tmp_path / "run", llm=_Rendering())
    html = build_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "<dt>Conditioning</dt>" in html and "conditioning (scripted): replies: the server&#39;s chat" in html
    assert '<div class="invalid">WARNING: scripted: the server renders the chat template' in html
