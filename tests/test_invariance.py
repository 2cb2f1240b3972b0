"""check-model MODEL --against OTHER: the same survey prompts on two backends, and how far apart
their measurements lie. Every number is checked against one computed here, independently."""

import json
import math

import numpy as np
import pytest

from debatelab.cli import main
from debatelab.errors import DebatelabError
from debatelab.invariance import INVARIANCE_TOLERANCE, run_invariance
from debatelab.llm.base import Conditioning
from debatelab.llm.scripted import ScriptedLLM, default_scores
from debatelab.llm.wrappers import Wrapper
from debatelab.personas import load_bank
from debatelab.prompts import SURVEY_PREFIX
from debatelab.topics import BUILTIN_TOPICS

TOPICS = [BUILTIN_TOPICS["racism"], BUILTIN_TOPICS["gun_violence"]]


def _strict(text: str) -> dict:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))


def _loader(**llms):
    """A ``load`` for run_invariance: the test double named by the model string."""
    return lambda model, options: llms[model]


def _fixed(value: int, logprobs: list[float]) -> ScriptedLLM:
    """Always answers ``value`` greedily and scores the options with ``logprobs``."""
    return ScriptedLLM(reply_fn=lambda r: str(value) if r.prompt.assistant_prefix == SURVEY_PREFIX else "x",
                       score_fn=lambda r: logprobs)


class Tilted(Wrapper):
    """The same model with every option's log-probability tilted by ``slope * index``."""

    def __init__(self, inner, slope: float):
        super().__init__(inner)
        self.slope = slope

    def score_options(self, requests):
        return [s.__class__(tuple(lp + self.slope * i for i, lp in enumerate(s.logprobs)))
                for s in self.inner.score_options(requests)]


class ServerRendered(Wrapper):
    """As a chat server that renders the template itself: the messages' JSON, not exact."""

    def conditioning(self, prompt, purpose="generate"):
        text = json.dumps([m.as_dict() for m in prompt.messages] + [prompt.assistant_prefix])
        return Conditioning(text, False, "the server renders the chat template")


def test_one_backend_on_both_sides_measures_no_difference(tmp_path, capsys):
    out = tmp_path / "inv.json"
    assert main(["check-model", "opinion-sim", "--against", "opinion-sim", "--topics", "racism", "gun_violence",
                 "--per-party", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: invariant within 0.3: mean |Δ expected score| 0.000 over 18 surveys" in printed
    record = _strict(out.read_text())
    overall = record["overall"]
    assert overall["surveys"] == overall["compared"] == overall["greedy_compared"] == 18
    assert overall["mean_abs_delta_expected"] == overall["mean_tv"] == overall["mean_abs_delta_greedy"] == 0
    assert overall["greedy_equal_share"] == 1 and overall["same_prompt_score"] == overall["same_prompt_generate"] == 18
    assert record["invariant"] is True and all(t["invariant"] for t in record["topics"])
    assert all(side["exact"] for side in record["sides"].values())
    assert record["personas"] == "generated on opinion-sim" and record["tolerance"] == INVARIANCE_TOLERANCE


def test_json_shape(tmp_path):
    out = tmp_path / "inv.json"
    assert main(["check-model", "scripted", "--against", "scripted", "--topics", "racism", "--per-party", "2",
                 "--json", str(out)]) == 0
    record = _strict(out.read_text())
    assert set(record) == {"model", "against", "scale", "per_party", "seed", "tolerance", "personas", "sides",
                           "topics", "overall", "checked_at", "invariant", "verdict", "surveys"}
    assert set(record["sides"]) == {"model", "against"}
    assert set(record["sides"]["against"]) == {"model", "identity", "exact", "how_generate", "how_score",
                                               "sources", "failed"}
    assert set(record["overall"]) == {"topic", "surveys", "compared", "mean_abs_delta_expected", "greedy_compared",
                                      "mean_abs_delta_greedy", "greedy_equal_share", "mean_tv", "option_mass_model",
                                      "option_mass_against", "same_prompt_generate", "same_prompt_score", "invariant"}
    assert [t["topic"] for t in record["topics"]] == ["racism"] and record["overall"]["topic"] == "all"
    survey = record["surveys"][0]
    assert set(survey) == {"topic", "role", "agent", "persona_id", "model", "against", "abs_delta_expected",
                           "abs_delta_greedy", "tv"}
    assert set(survey["model"]) == {"score", "raw", "expected_score", "probs", "option_mass", "source", "error",
                                    "generate_sha", "score_sha", "exact"}
    assert len(record["surveys"]) == 6 and [s["role"] for s in record["surveys"][:3]] == ["republican", "democrat",
                                                                                       "default"]


def test_uniform_against_one_hot_by_hand(bank):
    uniform, one_hot = [math.log(1 / 11)] * 11, [0.0 if i == 8 else -math.inf for i in range(11)]
    result = run_invariance("a", "b", TOPICS, 2, bank=load_bank(bank),
                            load=_loader(a=_fixed(5, uniform), b=_fixed(8, one_hot)))
    o = result.overall
    assert o.surveys == o.compared == 12
    assert o.mean_abs_delta_expected == pytest.approx(3.0) and o.mean_abs_delta_greedy == 3
    assert o.greedy_equal_share == 0 and o.mean_tv == pytest.approx(10 / 11)  # ½(10·1/11 + |1/11 − 1|)
    assert o.option_mass_model == pytest.approx(1.0) and o.option_mass_against == pytest.approx(1.0)
    assert not result.invariant and result.verdict.startswith("NOT invariant: mean |Δ expected score| 3.000 > 0.3")
    assert result.personas == "bank" and result.per_party == 2


def test_tilted_log_probabilities_match_numpy(bank):
    base = ScriptedLLM()
    result = run_invariance("a", "b", TOPICS, 3, bank=load_bank(bank),
                            load=_loader(a=base, b=Tilted(ScriptedLLM(), 0.15)))
    requests = base.score_calls[0]
    lp = np.array([default_scores(r) for r in requests])
    p = np.exp(lp) / np.exp(lp).sum(axis=1, keepdims=True)
    q = np.exp(lp + 0.15 * np.arange(11)) / np.exp(lp + 0.15 * np.arange(11)).sum(axis=1, keepdims=True)
    delta = np.abs(p @ np.arange(11) - q @ np.arange(11))
    tv = 0.5 * np.abs(p - q).sum(axis=1)
    assert result.overall.mean_abs_delta_expected == pytest.approx(delta.mean())
    assert result.overall.mean_tv == pytest.approx(tv.mean())
    racism = [i for i, s in enumerate(result.surveys) if s.topic == "racism"]
    assert result.topics[0].mean_abs_delta_expected == pytest.approx(delta[racism].mean())
    assert result.overall.greedy_equal_share == 1  # the tilt changes the distribution, not the greedy answer
    assert result.overall.same_prompt_score == 18 and result.invariant == (delta.mean() <= INVARIANCE_TOLERANCE)


def test_a_server_rendered_side_is_counted_and_named(bank):
    result = run_invariance("a", "openai:m", TOPICS[:1], 2, bank=load_bank(bank),
                            load=_loader(**{"a": ScriptedLLM(), "openai:m": ServerRendered(ScriptedLLM())}))
    o = result.overall
    assert o.same_prompt_score == o.same_prompt_generate == 0 and o.mean_abs_delta_expected == 0
    assert result.sides["model"].exact and not result.sides["against"].exact
    assert result.sides["against"].how_score == "the server renders the chat template"
    assert result.verdict.startswith("invariant within 0.3")
    assert "different text for 6/6 survey prompts" in result.verdict
    assert "openai:m: the server renders the chat template, so its prompt hashes identify requests" in result.verdict


def test_another_default_moves_only_the_default_agents():
    result = run_invariance("opinion-sim", "opinion-sim:default=9", TOPICS[:1], 3)
    by_role = {role: [s.abs_delta_expected for s in result.surveys if s.role == role]
               for role in ("republican", "democrat", "default")}
    assert by_role["republican"] == by_role["democrat"] == [0.0] * 3
    assert min(by_role["default"]) > 0.5 and not result.invariant


def test_pew4_scales_the_tolerance(capsys):
    assert main(["check-model", "scripted", "--against", "scripted", "--topics", "racism", "--per-party", "1",
                 "--scale", "pew4"]) == 0
    assert "verdict: invariant within 0.09:" in capsys.readouterr().out


def test_tiny_hf_model_against_itself_through_options_files(tmp_path, tiny_model_dir, bank, capsys):
    mine, theirs = tmp_path / "a.yaml", tmp_path / "b.yaml"
    mine.write_text("device: cpu\nthreads: 1\nbatch_size: 2\n")
    theirs.write_text("device: cpu\nthreads: 1\nbatch_size: 5\nprefix_cache_mb: 0\n")
    out, model = tmp_path / "inv.json", f"hf:{tiny_model_dir}"
    assert main(["check-model", model, "--options", str(mine), "--against", model, "--against-options", str(theirs),
                 "--personas", str(bank), "--topics", "racism", "--per-party", "2", "--json", str(out)]) == 0
    record = _strict(out.read_text())
    assert record["overall"]["same_prompt_score"] == record["overall"]["surveys"] == 6
    assert all(side["exact"] for side in record["sides"].values())
    assert "chat template" in record["sides"]["model"]["how_score"]
    assert record["overall"]["mean_abs_delta_expected"] < 1e-4 and record["invariant"]
    assert record["sides"]["model"]["sources"] == {"logprobs": 6}
    assert "verdict: invariant within 0.3" in capsys.readouterr().out


@pytest.mark.parametrize("extra, files, message", [
    (["--against", "nope"], {}, "unknown model 'nope'"),
    (["--against", "opinion-sim:pull=x"], {}, "opinion-sim: pull must be a number"),
    (["--against", "scripted", "--against-options", "{o}"], {"o": "bogus: 1\n"},
     "invalid backend options {o}: bogus: unknown field"),
    (["--against", "scripted", "--against-options", "{o}"], {"o": "batch_size: 0\n"}, "batch_size"),
    (["--options", "{o}", "--against", "scripted"], {"o": "- a list\n"}, "must be a YAML mapping"),
    (["--against-options", "{o}"], {"o": "api: chat\n"}, "--against-options gives the options of --against"),
    (["--options", "{o}"], {"o": "dtype: float8\n"}, "invalid backend options {o}: dtype"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, files, message):
    paths = {}
    for key, text in files.items():
        paths[key] = tmp_path / f"{key}.yaml"
        paths[key].write_text(text)
    args = [a.format(**paths) for a in extra]
    assert main(["check-model", "scripted", "--topics", "racism", "--per-party", "1", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message.format(**paths) in captured.err


def test_a_bank_without_one_party_is_refused(bank):
    republicans = [p for p in load_bank(bank) if p.party == "republican"]
    with pytest.raises(DebatelabError, match="no Republican and Democrat persona to seat"):
        run_invariance("scripted", "scripted", TOPICS, 2, bank=republicans)


class Failing(Wrapper):
    """A backend whose every scoring request failed for good."""

    def score_options(self, requests):
        from debatelab.llm.base import OptionScores

        return [OptionScores((), error="HTTP 500") for _ in requests]


def test_failed_requests_are_counted_and_nothing_is_compared(bank):
    result = run_invariance("a", "b", TOPICS[:1], 2, bank=load_bank(bank),
                            load=_loader(a=ScriptedLLM(), b=Failing(ScriptedLLM())))
    assert result.sides["against"].failed == 6 and result.sides["against"].sources == {"none": 6}
    assert result.overall.compared == result.overall.greedy_compared == 0
    assert result.overall.mean_abs_delta_expected is None and not result.invariant
    assert result.verdict.startswith("NOT invariant: no survey has a distribution with mass > 0 on both backends")
    assert result.surveys[0].against.error == "HTTP 500"
