"""A society's config, population and network: bounds, one-line errors, and what each generator builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from debatelab.config import load_config
from debatelab.llm.scripted import ScriptedLLM
from debatelab.personas import generate_personas
from debatelab.planning import personas_needed
from debatelab.society.config import NetworkConfig, PartyMix, SocietyConfig
from debatelab.society.network import build_graph, encounters, neighbour_lists
from debatelab.society.population import build_members, letters

PRESETS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "society").glob("*.yaml"))


def _society(tmp_path: Path, **section: object) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"model": "scripted", "topics": ["racism"], "society": section}))
    return path


def _members(config: SocietyConfig):
    bank = generate_personas(ScriptedLLM(), "scripted", personas_needed(config), config.seed)
    return build_members(config, bank)


def test_there_are_the_issue_presets():
    names = {p.stem for p in PRESETS}
    assert {"echo_chambers_h09", "echo_chambers_h05", "echo_chambers_h09_default", "echo_chambers_h05_default",
            "figure3_society"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_build_their_population_and_network(path):
    config = load_config(path)
    assert isinstance(config, SocietyConfig)
    members = _members(config)
    counts = config.society.mix.counts(config.society.population)
    assert [sum(m.party == p for m in members) for p in counts] == list(counts.values())
    assert len({m.name for m in members}) == len(members)  # names tell agents apart in prompts
    graph = build_graph(config.society.network, [m.party for m in members], [m.community for m in members],
                        config.seed)
    assert graph.number_of_nodes() == len(members)
    if config.society.network.kind == "two_communities":
        inside = sum(members[a].community == members[b].community for a, b in graph.edges())
        assert abs(inside / graph.number_of_edges() - config.society.network.homophily) < 0.05
        mean_degree = 2 * graph.number_of_edges() / len(members)
        assert abs(mean_degree - config.society.network.degree) < 1.0


def test_generators_build_what_their_parameters_say():
    parties = ["republican", "democrat"] * 100
    none = [None] * 200
    er = build_graph(NetworkConfig(kind="erdos_renyi", degree=6), parties, none, 1)
    assert abs(2 * er.number_of_edges() / 200 - 6) < 0.8
    ws = build_graph(NetworkConfig(kind="watts_strogatz", degree=6, rewiring=0.0), parties, none, 1)
    assert all(d == 6 for _, d in ws.degree())
    ba = build_graph(NetworkConfig(kind="barabasi_albert", degree=4), parties, none, 1)
    assert ba.number_of_edges() == 2 * (200 - 2)
    assert build_graph(NetworkConfig(kind="complete"), parties[:10], none[:10], 1).number_of_edges() == 45
    again = build_graph(NetworkConfig(kind="erdos_renyi", degree=6), parties, none, 1)
    assert sorted(again.edges()) == sorted(er.edges())  # seeded


@pytest.mark.parametrize("size", [2, 3])
def test_encounters_follow_edges_are_disjoint_maximal_and_seeded(size):
    graph = build_graph(NetworkConfig(kind="erdos_renyi", degree=5), ["republican"] * 300, [None] * 300, 2)
    neighbours = neighbour_lists(graph, 300)
    groups = encounters(neighbours, size, seed=4, step=1)
    seen = [a for g in groups for a in g]
    assert len(seen) == len(set(seen)) and all(len(g) == size for g in groups)
    assert all(graph.has_edge(g[0], other) for g in groups for other in g[1:])
    free = set(range(300)) - set(seen)
    assert all(sum(j in free for j in neighbours[i]) < size - 1 for i in free)  # nobody left who could meet
    assert encounters(neighbours, size, seed=4, step=1) == groups
    assert encounters(neighbours, size, seed=4, step=2) != groups


def test_a_large_population_reuses_personas_under_unique_names(tmp_path):
    config = load_config(_society(tmp_path, population=500))
    members = _members(config)
    assert len({m.name for m in members}) == 500
    assert len({m.persona_id for m in members}) <= 80  # at most 40 personas per party are generated
    assert [letters(k) for k in (1, 25, 26, 27)] == ["B", "Z", "AA", "AB"]


def test_mix_counts_add_up_by_largest_remainder():
    assert PartyMix(republican=0.45, democrat=0.45, default=0.1).counts(7) == {
        "republican": 3, "democrat": 3, "default": 1}
    assert sum(PartyMix(republican=1 / 3, democrat=1 / 3, default=1 / 3).counts(100).values()) == 100


BAD = [
    ({"population": 1}, "society.population"),
    ({"population": 10, "mix": {"republican": 0.7}}, "add up to 1"),
    ({"population": 3000, "network": {"kind": "complete"}}, "complete graph"),
    ({"population": 10, "network": {"kind": "edge_list"}}, "network.file"),
    ({"population": 10, "network": {"kind": "edge_list", "file": "missing.txt"}}, "cannot read edge list"),
    ({"population": 4, "network": {"kind": "watts_strogatz", "degree": 6}}, "needs more than 4 agents"),
    ({"population": 10, "encounter_size": 4}, "encounter_size"),
    ({"population": 10, "memory": "forever"}, "society.memory"),
    ({"population": 10, "steps": 0}, "society.steps"),
    ({"population": 10, "colour": "red"}, "unknown field"),
    ({"population": 2, "encounter_size": 3}, "cannot form encounters of 3"),
    ({"population": 100000, "network": {"kind": "erdos_renyi", "degree": 1000}}, "at most 2,000,000"),
    ({"population": 10, "network": {"kind": "edge_list", "file": "isolated.txt"}}, "no encounter of 2"),
    ({"population": 10, "network": {"kind": "edge_list", "file": "digits.txt"}}, "expected two agent indices"),
]


@pytest.mark.parametrize("section,message", BAD, ids=[m for _, m in BAD])
def test_bad_society_configs_fail_with_one_line_and_exit_2(tmp_path, section, message):
    (tmp_path / "isolated.txt").write_text("# nobody knows anybody\n")
    (tmp_path / "digits.txt").write_text("0 \u00b2\n")  # isdigit() but not int()
    cfg = _society(tmp_path, **section)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "debatelab.cli", "run", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_roster_in_a_society_config_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"model": "scripted", "topics": ["racism"], "agents": ["republican", "democrat"],
                                    "rounds": 2, "society": {"population": 4}}))
    with pytest.raises(Exception, match="a society config takes no agents, rounds"):
        load_config(path)


def test_an_edge_list_out_of_range_names_the_line(tmp_path):
    (tmp_path / "edges.txt").write_text("# a comment\n0 1\n\n1 9\n")
    cfg = _society(tmp_path, population=5, network={"kind": "edge_list", "file": "edges.txt"})
    proc = subprocess.run([sys.executable, "-m", "debatelab.cli", "run", str(cfg), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "line 4: agent 9 does not exist" in proc.stderr


def test_the_dry_run_states_the_encounters_the_run_then_has(tmp_path):
    from debatelab.experiment import run_experiment

    cfg = _society(tmp_path, population=50, steps=3, encounter_size=3, memory="summary",
                   network={"kind": "erdos_renyi", "degree": 3})
    proc = subprocess.run([sys.executable, "-m", "debatelab.cli", "run", str(cfg), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and not (tmp_path / "runs").exists()
    summary = run_experiment(load_config(cfg), tmp_path / "run")
    met = summary.society["encounters"]
    assert f"encounters of 3: {met} in all" in proc.stdout
    assert f"requests: {met * 3} replies, {met * 3} notes to self, {(50 + 5) + 50 * 3} surveys" in proc.stdout


def test_a_run_never_resumes_on_another_graph(tmp_path):
    from debatelab.errors import DebatelabError
    from debatelab.experiment import run_experiment

    (tmp_path / "edges.txt").write_text("0 1\n2 3\n")
    cfg = _society(tmp_path, population=4, steps=1, network={"kind": "edge_list", "file": "edges.txt"})
    run_experiment(load_config(cfg), tmp_path / "run")
    (tmp_path / "edges.txt").write_text("0 2\n1 3\n")
    with pytest.raises(DebatelabError, match="different config"):
        run_experiment(load_config(cfg), tmp_path / "run")


def test_pew4_and_share_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"model": "scripted", "topics": ["racism"], "survey": {"scale": "pew4"},
                                    "society": {"population": 4}}))
    with pytest.raises(Exception, match="0-10 scale"):
        load_config(path)
    assert PartyMix.model_validate({"default": 1}).counts(5) == {"republican": 0, "democrat": 0, "default": 5}


def test_names_stay_unique_when_a_bank_holds_a_lettered_name(tmp_path):
    from debatelab.types import Persona

    bank = [Persona(id=f"r{i}", party="republican", name=name, background="You are a Republican.")
            for i, name in enumerate(["Ann", "Ann B"])] + [
            Persona(id="d0", party="democrat", name="Bo", background="You are a Democrat.")]
    config = load_config(_society(tmp_path, population=12))
    members = build_members(config, bank)
    assert len({m.name for m in members}) == 12


def test_homophily_is_the_share_of_ties_inside_blocks_even_for_unequal_blocks():
    parties = ["republican"] * 300 + ["democrat"] * 100
    communities = [0] * 300 + [1] * 100
    for h in (0.5, 0.9):
        graph = build_graph(NetworkConfig(kind="two_communities", degree=8, homophily=h), parties, communities, 3)
        inside = sum(communities[a] == communities[b] for a, b in graph.edges())
        assert abs(inside / graph.number_of_edges() - h) < 0.03
        assert abs(2 * graph.number_of_edges() / 400 - 8) < 0.5


def test_debate_views_refuse_a_society(tmp_path):
    from debatelab.experiment import run_experiment

    run_experiment(load_config(_society(tmp_path, population=6, steps=1, network={"kind": "complete"})), tmp_path / "run")
    for command in (["show", str(tmp_path / "run")], ["analyze", str(tmp_path / "run"), "--json", str(tmp_path / "a.json")]):
        proc = subprocess.run([sys.executable, "-m", "debatelab.cli", *command], capture_output=True, text=True)
        assert proc.returncode == 2 and "is a society" in proc.stderr and "Traceback" not in proc.stderr
