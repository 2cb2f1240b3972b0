"""`debatelab bench` on the scripted backend and a tiny local HF model: report shape and agreement
between modes (no timing asserts: CI machines vary)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import build_tiny_model

from debatelab.bench import BenchSettings, OneAtATime, format_report, roofline, run_bench
from debatelab.bench.agreement import compare_backends, distribution_gap, within_tolerance
from debatelab.cli import main
from debatelab.llm.base import GenerateRequest, Message, OptionScores, Prompt, ScoreRequest
from debatelab.llm.hf import HFLLM
from debatelab.llm.options import BackendOptions
from debatelab.llm.registry import load_llm
from debatelab.llm.scripted import ScriptedLLM
from debatelab.llm.wrappers import Wrapper
from debatelab.prompts import SURVEY_OPTIONS

SMALL = {"debates": 4, "one_at_a_time_debates": 2, "rounds": 1, "max_tokens": 8, "survey_prompts": 6}
TOP_KEYS = {"workload", "modes", "ratios", "speedup", "correctness", "survey_methods", "survey_speedup", "machine",
            "roofline"}


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    threads = torch.get_num_threads()
    yield load_llm(f"hf:{tiny_dir}", BackendOptions(device="cpu", dtype="float32", threads=1))
    torch.set_num_threads(threads)


def _check_shape(report: dict) -> None:
    assert TOP_KEYS <= report.keys()
    assert isinstance(report["speedup"], float) and math.isfinite(report["speedup"]) and report["speedup"] > 0
    assert isinstance(report["survey_speedup"], float) and report["survey_speedup"] > 0
    for mode in ("one_at_a_time", "wave"):
        stats = report["modes"][mode]
        for key in ("seconds", "tokens_per_s", "turns_per_s", "surveys_per_s", "peak_rss_mb"):
            assert stats[key] > 0, (mode, key)
    assert report["modes"]["wave"]["turns"] == 4 * 3 and report["modes"]["one_at_a_time"]["turns"] == 2 * 3
    assert report["modes"]["wave"]["surveys"] == 4 * 6
    assert {"cpu_count", "dtype", "model_identity", "cpu_model"} <= report["machine"].keys()
    methods = report["survey_methods"]
    assert methods["prompts"] == 6 and methods["generate_s_per_survey"] > 0 and methods["logprobs_s_per_survey"] > 0
    json.dumps(report)  # JSON-ready as it is


def test_scripted_report_and_identical_transcripts() -> None:
    report = run_bench(BenchSettings(model="scripted", **SMALL))
    _check_shape(report)
    check = report["correctness"]
    assert check["transcripts_identical"] and check["identical_debates"] == check["debates"] == 2
    assert check["survey_scores_equal"] == check["surveys"] == 2 * 6
    text = format_report(report)
    assert "speedup" in text and "correctness: transcripts identical" in text and "survey_speedup" in text
    assert report["roofline"] is None and "roofline: not available" in text  # no FLOPs behind a script


def test_tiny_hf_model_modes_agree(tiny: HFLLM, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roofline.peak, "SQUARES", (256,))  # the real peak measure takes a few seconds
    monkeypatch.setattr(roofline.peak, "SHAPE_BUDGET_S", 0.05)
    monkeypatch.setattr(roofline.peak, "BANDWIDTH_BYTES", 2**20)  # and the bandwidth one: 256 MiB
    monkeypatch.setattr(roofline.peak, "BANDWIDTH_BUDGET_S", 0.05)
    report = run_bench(BenchSettings(model=f"hf:{tiny_dir}", **SMALL), llm=tiny)
    _check_shape(report)
    check = report["correctness"]
    assert check["transcripts_identical"], check
    assert check["survey_max_abs_diff_expected"] < 1e-3
    assert report["machine"]["dtype"] == "float32" and report["machine"]["torch_threads"] == 1
    assert report["modes"]["wave"]["completion_tokens"] > 0
    # the baseline computes every prompt in full; waves reuse each agent's earlier prompt
    assert report["modes"]["one_at_a_time"]["prefix_cache"] is None
    cache = report["modes"]["wave"]["prefix_cache"]
    assert cache["hits"] > 0 and 0.2 < cache["reused_share"] < 1
    assert tiny.prefix_cache is not None  # switched back on after the baseline
    assert "prompt-prefix cache: one at a time: off; wave: " in format_report(report)
    _check_roofline(report)


def _check_roofline(report: dict) -> None:
    """Each mode's needed work from its own calls, against the backend's own counts."""
    roof = report["roofline"]
    assert roof["peak"]["gflops"] > 0 and roof["peak"]["dtype"] == "float32" and roof["peak"]["threads"] == 1
    for mode in ("one_at_a_time", "wave"):
        r, measured = roof["modes"][mode], report["modes"][mode]
        assert r["measured_s"] == measured["seconds"] and r["needed_gflop"] > 0
        assert 0 < r["efficiency"] < 1 and r["bound_s"] == pytest.approx(r["needed_gflop"] / roof["peak"]["gflops"])
        assert r["prompts"] == measured["turns"] + measured["surveys"]  # a reply or a survey each
        assert r["generated_tokens"] == measured["completion_tokens"]  # surveys by option scoring
        assert r["needed_prompt_tokens"] <= r["computed_prompt_tokens"] <= r["prompt_tokens"]
        assert 0 < r["reuse_bound_share"] < 1
        assert r["kv_read_gb"] > 0 and r["roofline_bound_s"] == max(r["bound_s"], r["memory_bound_s"])
        assert 0 < r["roofline_efficiency"] < 1
    one, wave = roof["modes"]["one_at_a_time"], roof["modes"]["wave"]
    assert one["computed_prompt_tokens"] == one["prompt_tokens"]  # the baseline computes every prompt in full
    assert wave["prompt_tokens"] == report["modes"]["wave"]["prefix_cache"]["prompt_tokens"]
    assert wave["prompts"] > one["prompts"]  # the baseline runs only the first debates
    text = format_report(report)
    assert "roofline (matmul work" in text and "wave: " in text and "efficiency" in text
    assert roof["bandwidth"]["gb_s"] > 0 and "GB/s read bandwidth" in text and "memory roof: " in text


def test_one_at_a_time_sends_each_request_alone() -> None:
    inner = ScriptedLLM()
    wrapped = OneAtATime(inner)
    prompt = Prompt(text="hi")
    wrapped.generate([GenerateRequest(prompt, seed=i) for i in range(3)])
    wrapped.score_options([ScoreRequest(prompt, ("0", "1"))] * 2)
    assert [len(b) for b in inner.generate_calls] == [1, 1, 1]
    assert [len(b) for b in inner.score_calls] == [1, 1]
    assert wrapped.identity() == inner.identity()


def test_cli_bench_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "scripted", "--debates", "3", "--one-at-a-time-debates", "2",
                 "--max-tokens", "8", "--survey-prompts", "4", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert TOP_KEYS <= report.keys() and report["speedup"] > 0
    assert report["workload"]["debates"] == 3 and report["workload"]["one_at_a_time_debates"] == 2
    assert "speedup (wave over one-at-a-time tokens/s)" in capsys.readouterr().out


# ---- survey-distribution agreement (the bf16 check) -----------------------------------------------
def _survey_requests(n: int) -> list[ScoreRequest]:
    topics = ["climate policy", "carbon taxes", "remote work", "social media", "the survey"]
    return [ScoreRequest(Prompt(messages=(Message("system", f"You are Alice, a debate agent number {i}."),
                                          Message("user", f"On a scale from 0 to 10, do you agree on {topics[i % 5]}?")),
                                assistant_prefix="Rating: "), SURVEY_OPTIONS) for i in range(n)]


def test_tolerance_check_accepts_equal_and_rejects_different_models(tiny: HFLLM, tiny_dir: Path, tmp_path: Path) -> None:
    requests = _survey_requests(6)
    same = compare_backends(tiny, tiny, requests)
    assert same["within_tolerance"] and same["max_tv"] < 1e-6 and same["argmax_agree"] == 1.0
    other = load_llm(f"hf:{build_tiny_model(tmp_path / 'other', seed=1)}",
                     BackendOptions(device="cpu", dtype="float32", threads=1))
    different = compare_backends(tiny, other, requests)
    assert not different["within_tolerance"], different
    # the tiny model in bf16: recorded, and the check runs end to end on it
    bf16 = load_llm(f"hf:{tiny_dir}", BackendOptions(device="cpu", dtype="bfloat16", threads=1))
    gap = compare_backends(tiny, bf16, requests)
    assert gap["other"]["dtype"] == "bfloat16"
    _check_gap_against_numpy(gap, tiny, bf16, requests)
    assert gap["max_tv"] > 0  # bf16 rounding does move the distributions: the check is not vacuous
    _check_gap_against_numpy(different, tiny, other, requests)


def _numpy_gap(reference, other, requests) -> dict[str, float]:
    """The same summary, computed independently: softmax over the finite log-probs of 0..10."""
    def dists(llm):
        with llm.without_cache():
            lp = np.array([s.logprobs for s in llm.score_options(list(requests))], dtype=float)
        lp = np.where(np.isfinite(lp), lp, -np.inf)
        p = np.exp(lp - lp.max(axis=1, keepdims=True))  # exp(-inf) = 0: options without a log-prob
        return p / p.sum(axis=1, keepdims=True)

    p, q = dists(reference), dists(other)
    tv = 0.5 * np.abs(p - q).sum(axis=1)
    scale = np.arange(p.shape[1])
    diff = np.abs(p @ scale - q @ scale)
    return {"mean_tv": tv.mean(), "max_tv": tv.max(), "mean_abs_diff_expected": diff.mean(),
            "max_abs_diff_expected": diff.max(), "argmax_agree": float((p.argmax(1) == q.argmax(1)).mean())}


def _check_gap_against_numpy(gap, reference, other, requests) -> None:
    expected = _numpy_gap(reference, other, requests)
    assert gap["prompts"] == len(requests)
    for key, value in expected.items():
        assert gap[key] == pytest.approx(value, abs=1e-9), key
    assert gap["within_tolerance"] == (expected["mean_tv"] < 0.05 and expected["mean_abs_diff_expected"] < 0.1)


def test_distribution_gap_by_hand() -> None:
    log = math.log
    a = [OptionScores((log(0.5), log(0.5), float("-inf")))]
    b = [OptionScores((log(0.25), log(0.5), log(0.25)))]
    gap = distribution_gap(a, b)
    assert gap["mean_tv"] == pytest.approx(0.25)  # renormalised: (0.5, 0.5, 0) vs (0.25, 0.5, 0.25)
    assert gap["mean_abs_diff_expected"] == pytest.approx(0.5)  # 0.5 vs 1.0
    assert not within_tolerance(gap) and within_tolerance(gap, tv=0.3, expected=0.6)


class _Replayed(Wrapper):
    """Scores each distinct batch once: the numpy cross-check then reads the very scores that
    compare_backends saw (scoring is deterministic) instead of paying for bf16 on CPU twice."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seen = {}

    def score_options(self, requests):
        key = tuple(requests)
        if key not in self.seen:
            self.seen[key] = self.inner.score_options(requests)
        return self.seen[key]


@pytest.mark.embedded
@pytest.mark.slow
def test_embedded_bf16_survey_distributions_recorded(tmp_path: Path, record_property) -> None:
    """fp32 vs bf16 on real survey prompts of the embedded model (from a short debate run). The
    CPU default stays float32 unless bf16 agrees within tolerance (it did not when measured)."""
    from debatelab.bench.workload import Recorder, bench_config, write_bank
    from debatelab.experiment import run_experiment
    from debatelab.llm.hf_load import resolve_device_dtype

    fp32 = _Replayed(load_llm("embedded", BackendOptions(dtype="float32")))
    recorder = Recorder(fp32)
    config = bench_config(BenchSettings(debates=4, rounds=1, max_tokens=16), write_bank(tmp_path / "bank.jsonl", 4), 4)
    run_experiment(config, tmp_path / "run", llm=recorder)
    bf16 = _Replayed(load_llm("embedded", BackendOptions(dtype="bfloat16")))
    gap = compare_backends(fp32, bf16, recorder.score_requests)
    record_property("bf16_vs_fp32", {k: v for k, v in gap.items() if k not in ("reference", "other")})
    print(f"bf16 vs fp32 on {gap['prompts']} survey prompts: mean TV {gap['mean_tv']:.4f} (max {gap['max_tv']:.4f}), "
          f"mean |d expected| {gap['mean_abs_diff_expected']:.4f} (max {gap['max_abs_diff_expected']:.4f})")
    assert gap["prompts"] == 4 * 6 and gap["argmax_agree"] > 0.5
    _check_gap_against_numpy(gap, fp32, bf16, recorder.score_requests)
    if not gap["within_tolerance"]:
        assert resolve_device_dtype(BackendOptions(device="cpu"))[1] == torch.float32
