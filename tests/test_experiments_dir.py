"""Every shipped experiment config validates, and plans the debates it promises."""

from collections import Counter
from pathlib import Path

import pytest

from debatelab.config import load_config
from debatelab.personas import generate_personas
from debatelab.planning import check_feasible, personas_needed, plan_debates
from debatelab.llm.scripted import ScriptedLLM

ROOT = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(p for p in ROOT.glob("**/*.yaml") if not p.name.startswith(("study_", "lab_"))
                 and p.parent.name != "society")
STUDIES = sorted(ROOT.glob("**/study_*.yaml"))
LABS = sorted(ROOT.glob("**/lab_*.yaml"))


def test_there_are_configs():
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_plans(path):
    config = load_config(path)
    check_feasible(config, None)
    bank = generate_personas(ScriptedLLM(), "scripted", personas_needed(config), config.seed)
    specs = plan_debates(config, bank, {"backend": "scripted"})
    assert len(specs) == len(config.resolved_topics()) * config.repetitions
    assert len({s.debate_id for s in specs}) == len(specs)
    if config.persona_generation.per_party is None:  # a bank written for the roster seats every
        for topic in config.resolved_topics():      # persona in exactly one debate per topic
            seated = Counter(a.persona_id for s in specs if s.topic.id == topic.id for a in s.agents if a.persona_id)
            assert seated == Counter({p.id: 1 for p in bank}), topic.id


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_configs_validate(path):
    from debatelab.finetune.study import load_study

    study = load_study(path)
    assert study.experiment.is_file()


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_lab_files_validate_and_apply_every_method(path, tmp_path):
    from debatelab.lab.config import load_lab, method_configs

    lab = load_lab(path)
    configs = method_configs(lab, tmp_path / "personas.jsonl")
    assert list(configs) == lab.method_names()
    for name, group in configs.items():
        assert len(group) == len(lab.experiments)
        partisan = [k for c in group for k, r in zip(c.seat_models(), c.roles) if r != "default"]
        assert all(k == "" for k in partisan) if name == "baseline" or lab.methods[name].reanchor else \
            all(k for k in partisan), name
