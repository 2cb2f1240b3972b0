"""Per-agent models: a roster entry may name its own model or adapter; waves group by model."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from debatelab.errors import EXIT_BAD_INPUT
from debatelab.cli import main
from debatelab.config import Seat, load_config
from debatelab.experiment import run_experiment
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import load_bank
from debatelab.planning import plan_debates

from conftest import write_config


def _speakers(batch) -> set[str]:
    """Agent backgrounds are the system message, so they say who a request speaks for."""
    return {r.prompt.messages[0].content.split(",")[0] for r in batch}


def test_seat_config_parses_and_plain_rosters_keep_their_ids(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), agents=[
        "republican", {"role": "democrat", "model": "scripted:blue"}, {"role": "default"}]))
    assert cfg.roles == ["republican", "democrat", "default"]
    assert cfg.seat_models() == ["", "scripted:blue", ""]
    assert isinstance(cfg.agents[1], Seat) and set(cfg.seat_backends()) == {"scripted:blue"}
    personas = load_bank(bank)
    plain = load_config(write_config(tmp_path / "p.yaml", personas=str(bank)))
    as_seats = load_config(write_config(tmp_path / "s.yaml", personas=str(bank),
                                        agents=[{"role": r} for r in plain.roles]))
    ident = ScriptedLLM().identity()
    assert [s.debate_id for s in plan_debates(plain, personas, ident)] == \
        [s.debate_id for s in plan_debates(as_seats, personas, ident)]


@pytest.mark.parametrize("agents, needle", [
    (["republican", {"role": "green"}], "green"),
    (["republican", {"role": "democrat", "model": "gpt4"}], "unknown model"),
    (["republican", {"role": "democrat", "colour": "red"}], "colour"),
])
def test_bad_seats_are_one_line(tmp_path, bank, capsys, agents, needle):
    cfg = write_config(tmp_path / "c.yaml", personas=str(bank), agents=agents)
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and not (tmp_path / "run").exists()


def test_each_agent_is_served_by_its_own_model_in_grouped_waves(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), repetitions=2, agents=[
        "republican", {"role": "democrat", "model": "scripted:blue"}, "default"]))
    red, blue = ScriptedLLM("red"), ScriptedLLM("blue")
    summary = run_experiment(cfg, tmp_path / "run", llm=red, seat_llms={"scripted:blue": blue})
    assert summary.complete == 2
    specs = plan_debates(cfg, load_bank(bank), red.identity(), {"scripted:blue": blue.identity()})
    democrats = {f"You are {a.name}" for s in specs for a in s.agents if a.role == "democrat"}
    blue_asked = set().union(*map(_speakers, blue.generate_calls + blue.score_calls))
    red_asked = set().union(*map(_speakers, red.generate_calls[1:] + red.score_calls))
    assert blue_asked == democrats and not red_asked & democrats
    # one call per model per wave: the survey waves hit both models, each once
    assert len(red.score_calls) == len(blue.score_calls) == 3
    # another model for the democrat seat is another experiment: other ids, other run
    single = plan_debates(cfg.model_copy(update={"agents": cfg.roles}), load_bank(bank), red.identity())
    assert not {s.debate_id for s in single} & {s.debate_id for s in specs}
    identity = json.loads(sqlite3.connect(tmp_path / "run/run.sqlite").execute(
        "SELECT value FROM meta WHERE key = 'model_identity'").fetchone()[0])
    assert identity["seats"] == {"scripted:blue": blue.identity()}


@pytest.mark.embedded
def test_embedded_and_a_tiny_hf_model_debate_in_one_experiment(tmp_path, bank, tiny_model_dir):
    import math

    import debatelab
    from debatelab.llm.registry import load_llm
    from debatelab.survey import parse_rating
    from debatelab.types import Turn

    key = f"hf:{tiny_model_dir}"
    cfg = load_config(write_config(
        tmp_path / "c.yaml", model="embedded", personas=str(bank), repetitions=1, rounds=1,
        reply={"max_tokens": 12}, backend={"threads": 2},
        agents=["republican", {"role": "democrat", "model": key}, "default"]))
    llms = {"": load_llm("embedded", cfg.backend), key: load_llm(key, cfg.seat_backends()[key][1])}
    summary = run_experiment(cfg, tmp_path / "run", llm=llms[""], seat_llms={key: llms[key]})
    assert summary.complete == 1
    with (tmp_path / "run/attitudes.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2
    for r in rows:  # valid means the greedy answer parses; every survey also has its distribution
        assert (r["valid"] == "True") == (parse_rating(r["raw"]) is not None), r["raw"]
        assert r["source"] == "logprobs" and sum(float(r[f"p{i}"]) for i in range(11)) == pytest.approx(1.0)
    identity = json.loads(sqlite3.connect(tmp_path / "run/run.sqlite").execute(
        "SELECT value FROM meta WHERE key = 'model_identity'").fetchone()[0])
    assert identity["experiment"]["model"].startswith("embedded:")
    assert identity["seats"][key]["backend"] == "hf"
    # Each seat's distribution is its own model's: rebuild every survey prompt from the stored
    # debate and score it on both models, in full; the stored option mass is the seat's model's.
    [spec] = plan_debates(cfg, load_bank(bank), llms[""].identity(), {key: llms[key].identity()})
    turns = [Turn(iteration=t.iteration, agent_index=t.agent_index, text=t.text)
             for t in debatelab.load(tmp_path / "run").turns.sort_values("iteration").itertuples()]
    requests = [_survey_request(spec, int(r["agent_index"]), int(r["iteration"]), turns) for r in rows]
    masses = {}
    for name, llm in llms.items():
        with llm.without_cache():
            masses[name] = [sum(math.exp(lp) for lp in s.logprobs) for s in llm.score_options(requests)]
    assert [a.model for a in spec.agents] == ["", key, ""]
    for i, row in enumerate(rows):
        own = spec.agents[int(row["agent_index"])].model
        other = key if own == "" else ""
        assert float(row["option_mass"]) == pytest.approx(masses[own][i], rel=1e-3), row
        assert abs(masses[own][i] - masses[other][i]) > 1e-3 * masses[own][i]  # and not the other model's


def _survey_request(spec, agent: int, iteration: int, turns):
    from debatelab.llm.base import ScoreRequest
    from debatelab.prompts import SURVEY_OPTIONS, survey_prompt

    prompt = survey_prompt(spec.agents, agent, spec.topic, [t for t in turns if t.iteration <= iteration])
    return ScoreRequest(prompt, SURVEY_OPTIONS)


class _Engine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[object]]] = []


class _AdapterView(ScriptedLLM):
    """Stands in for a vllm: view: one engine, one adapter per view, mixed calls."""

    def __init__(self, engine: _Engine, adapter: str | None):
        super().__init__(f"view-{adapter}")
        self.engine, self.adapter = engine, adapter

    def shares_engine(self, other):
        return isinstance(other, _AdapterView) and other.engine is self.engine

    def generate(self, requests):
        self.engine.calls.append(("generate", [self.adapter] * len(requests)))
        return super().generate(requests)

    def generate_mixed(self, parts):
        self.engine.calls.append(("generate_mixed", [view.adapter for view, reqs in parts for _ in reqs]))
        return [ScriptedLLM.generate(view, reqs) for view, reqs in parts]

    def score_options_mixed(self, parts):
        self.engine.calls.append(("score_mixed", [view.adapter for view, reqs in parts for _ in reqs]))
        return [ScriptedLLM.score_options(view, reqs) for view, reqs in parts]


def test_adapter_views_of_one_engine_share_one_call_per_wave(tmp_path, bank):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), agents=[
        {"role": "republican", "adapter": "tuned-red"}, "democrat", "default"]))
    [(key, (model, options))] = cfg.seat_backends().items()
    assert model == "scripted" and options.adapter == str(tmp_path / "tuned-red")  # relative to the config
    engine = _Engine()
    base, red = _AdapterView(engine, None), _AdapterView(engine, options.adapter)
    assert run_experiment(cfg, tmp_path / "run", llm=base, seat_llms={key: red}).complete == 3
    assert all(kind != "generate" for kind, _ in engine.calls)  # never one call per adapter
    surveys = [adapters for kind, adapters in engine.calls if kind == "score_mixed"]
    assert len(surveys) == 3 and all(set(a) == {None, options.adapter} for a in surveys)
    assert all(a.count(options.adapter) == 3 for a in surveys)  # one Republican in each of 3 debates
