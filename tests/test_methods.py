"""The mitigation lab's methods as seat options: re-anchoring prompts, contrast prompts on the
requests, seat keys and ids that never mix, strength 0 = the baseline's results, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from debatelab.cli import main
from debatelab.config import load_config
from debatelab.errors import EXIT_BAD_INPUT
from debatelab.experiment import run_experiment
from debatelab.llm import load_llm
from debatelab.llm.options import BackendOptions
from debatelab.llm.scripted import ScriptedLLM
from debatelab.llm.wrappers import Wrapper
from debatelab.personas import load_bank
from debatelab.planning import plan_debates
from debatelab.prompts import SURVEY_PREFIX
from debatelab.types import DEFAULT_CONTEXT

from conftest import write_config

ANCHOR = "Remember the position you opened this debate with:"


def _republican_replies(llm: ScriptedLLM) -> list:
    return [r for batch in llm.generate_calls for r in batch
            if r.prompt.assistant_prefix != SURVEY_PREFIX and "lifelong republican" in r.prompt.messages[0].content]


@pytest.mark.parametrize("every, anchored", [(1, [False, True, True]), (2, [False, False, True])])
def test_reanchoring_restates_the_opening_statement(tmp_path, bank, every, anchored):
    cfg = load_config(write_config(tmp_path / "c.yaml", personas=str(bank), rounds=3, repetitions=1,
                                   agents=[{"role": "republican", "reanchor": every}, "democrat", "default"]))
    llm = ScriptedLLM()
    run_experiment(cfg, tmp_path / "run", llm=llm)
    replies = _republican_replies(llm)
    assert [ANCHOR in r.prompt.messages[1].content for r in replies] == anchored
    with open(tmp_path / "run" / "turns.csv") as fh:
        turns = [t for t in csv.DictReader(fh) if t["role"] == "republican"]
    opening = f'{ANCHOR} "{turns[0]["text"]}"'
    assert all(opening in r.prompt.messages[1].content for r, a in zip(replies, anchored) if a)
    surveys = [r for batch in llm.generate_calls for r in batch if r.prompt.assistant_prefix == SURVEY_PREFIX]
    assert surveys and not any(ANCHOR in r.prompt.messages[1].content for r in surveys)


def test_methods_join_the_seat_key_and_the_ids(tmp_path, bank):
    def plan(agents):
        cfg = load_config(write_config(tmp_path / "c.yaml", model="embedded", personas=str(bank), agents=agents))
        return cfg, plan_debates(cfg, load_bank(bank), {"backend": "x"}, {k: {"k": k} for k in cfg.seat_backends()})

    plain, base = plan(["republican", "democrat", "default"])
    steer = {"layer": 3, "scale": 0.0}
    cfg, specs = plan([{"role": "republican", "steering": steer}, {"role": "democrat", "steering": steer}, "default"])
    keys = cfg.seat_models()
    assert keys[0] == "embedded#steering(republican,L3,0)" and keys[1] == "embedded#steering(democrat,L3,0)"
    assert keys[2] == "" and {s.debate_id for s in specs}.isdisjoint(s.debate_id for s in base)
    _, anchored = plan([{"role": "republican", "reanchor": 0}, "democrat", "default"])
    assert [s.debate_id for s in anchored] == [s.debate_id for s in base]  # reanchor 0 is the plain roster
    cfg, _ = plan([{"role": "republican", "contrastive": {"strength": 1, "surveys": True}}, "democrat", "default"])
    assert cfg.seat_models()[0] == "embedded#contrastive(1,replies+surveys)"


class Recorder(Wrapper):
    """Keeps every request its views receive (a shared list: ``rewrap`` copies shallowly)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seen: list = []

    def generate(self, requests):
        self.seen += list(requests)
        return self.inner.generate(requests)

    def score_options(self, requests):
        self.seen += list(requests)
        return self.inner.score_options(requests)


def _tiny(tiny_model_dir: Path) -> Recorder:
    # One prompt at a time, in full: every float is then independent of how requests are grouped.
    return Recorder(load_llm(f"hf:{tiny_model_dir}", BackendOptions(
        device="cpu", dtype="float32", batch_size=1, prefix_cache_mb=0, threads=1)))


def _exports(run_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for name in ("turns.csv", "attitudes.csv"):
        with open(run_dir / name) as fh:
            out[name] = [{k: v for k, v in row.items() if k not in ("debate_id", "model", "prompt_sha")}
                         for row in csv.DictReader(fh)]
    return out


def _tiny_run(tmp_path: Path, bank: Path, llm, name: str, republican: dict) -> Path:
    cfg = load_config(write_config(tmp_path / f"{name}.yaml", model="embedded", personas=str(bank), rounds=2,
                                   repetitions=1, reply={"max_tokens": 12},
                                   agents=[{"role": "republican", **republican}, "democrat", "default"]))
    run_experiment(cfg, tmp_path / name, llm=llm)
    return tmp_path / name


def test_strength_zero_reproduces_the_baseline_and_contrast_prompts_drop_the_persona(tmp_path, bank, tiny_model_dir):
    llm = _tiny(tiny_model_dir)
    base = _exports(_tiny_run(tmp_path, bank, llm, "base", {}))
    for name, method in [("contrast0", {"contrastive": {"strength": 0, "surveys": True}}),
                         ("steer0", {"steering": {"layer": 1, "scale": 0}}), ("anchor0", {"reanchor": 0})]:
        llm.seen.clear()
        assert _exports(_tiny_run(tmp_path, bank, llm, name, method)) == base, name
    contrasted = [r for r in llm.seen if r.contrast is not None]
    assert not contrasted  # reanchor 0 is the plain roster
    llm.seen.clear()
    moved = _exports(_tiny_run(tmp_path, bank, llm, "contrast2", {"contrastive": {"strength": 2.0, "surveys": True}}))
    contrasted = [r for r in llm.seen if r.contrast is not None]
    assert contrasted and all(r.contrast.messages[0].content == DEFAULT_CONTEXT for r in contrasted)
    assert all(r.prompt.messages[0].content != DEFAULT_CONTEXT for r in contrasted)
    assert all(r.contrast.messages[1:] == r.prompt.messages[1:] for r in contrasted)  # only the persona differs
    assert moved != base


@pytest.mark.parametrize("agents, extra, needle", [
    ([{"role": "republican", "contrastive": {"strength": 1}}, "democrat"], {},
     "contrastive decoding and steering need a transformers model"),
    ([{"role": "default", "contrastive": {"strength": 1}}, "democrat"], {"model": "embedded"}, "a default seat has none"),
    ([{"role": "republican", "steering": {"layer": 1, "scale": 2}}, "democrat"], {"model": "embedded", "personas": None},
     "steering needs a persona bank"),
    ([{"role": "republican", "contrastive": {"strength": -1}}, "democrat"], {"model": "embedded"}, "strength"),
    ([{"role": "republican", "reanchor": -2}, "democrat"], {}, "reanchor"),
])
def test_bad_methods_are_one_line(tmp_path, bank, capsys, agents, extra, needle):
    values = {"personas": str(bank), "agents": agents, **extra}
    values = {k: v for k, v in values.items() if v is not None}
    cfg = write_config(tmp_path / "c.yaml", **values)
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_layer_fails_as_bad_input_before_any_debate(tmp_path, bank, capsys, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", model=f"hf:{tiny_model_dir}", personas=str(bank),
                       backend={"device": "cpu"}, agents=[{"role": "republican", "steering": {"layer": 50, "scale": 1}},
                                                          "democrat"])
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "steering layer 50 does not exist" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
