"""Run the bench workload in both modes, check they agree, time the two survey methods, report."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..experiment import run_experiment
from ..llm.base import LLM, GenerateRequest, Prompt, ScoreRequest
from ..llm.registry import load_llm
from ..prompts import SURVEY_OPTIONS
from ..store import read_transcript
from ..survey import normalise, parse_rating
from .agreement import compare_backends
from .roofline import Tracer, mode_rooflines, tracer_for
from .workload import (ROSTER, BenchSettings, OneAtATime, PeakRss, Recorder, Stopwatch, bench_config,
                       write_bank)

@dataclass
class ModeResult:
    seconds: float
    turns: int
    surveys: int
    completion_tokens: int
    peak_rss_mb: float
    prefix_cache: dict[str, float] | None = None
    """Prompt tokens looked up, reused from earlier calls, and their share (None: not used)."""

    def as_dict(self) -> dict[str, Any]:
        s = max(self.seconds, 1e-9)
        return {**asdict(self), "tokens_per_s": self.completion_tokens / s, "turns_per_s": self.turns / s,
                "surveys_per_s": self.surveys / s}


def run_bench(settings: BenchSettings, llm: LLM | None = None) -> dict[str, Any]:
    """Both modes on one model object, in one process; returns the report as a JSON-ready dict."""
    llm = llm or load_llm(settings.model, settings.backend)
    _warm_up(llm)
    recorder = Recorder(llm)
    results, transcripts, tracers = _run_modes(settings, llm, recorder)
    report: dict[str, Any] = {"workload": _workload(settings), **summarise(results)}
    report["correctness"] = compare_transcripts(transcripts["one_at_a_time"], transcripts["wave"])
    # Measured after the modes, so the matmul loop never shares the machine with a timed mode.
    report["roofline"] = mode_rooflines(tracers, {m: (r.seconds, r.prefix_cache) for m, r in results.items()})
    requests = spread(recorder.score_requests, settings.survey_prompts)
    if requests:
        report["survey_methods"] = compare_survey_methods(llm, requests, settings.survey_max_tokens)
        report["survey_speedup"] = report["survey_methods"]["survey_speedup"]
    if requests and settings.compare_dtype:
        other = load_llm(settings.model, settings.backend.model_copy(update={"dtype": settings.compare_dtype}))
        report["dtype_check"] = compare_backends(llm, other, requests)
    report["machine"] = machine_facts(llm)
    return report


def _run_modes(settings: BenchSettings, llm: LLM,
               recorder: Recorder) -> tuple[dict[str, ModeResult], dict[str, Any], dict[str, Tracer | None]]:
    """One-at-a-time runs the first debates of the workload, wave mode all of them in flight;
    each mode's calls traced on their own (the roofline's needed work of that mode)."""
    serial = min(settings.one_at_a_time_debates, settings.debates)
    results, transcripts = {}, {}
    tracers = {"one_at_a_time": tracer_for(llm), "wave": tracer_for(llm)}
    recorder.tracer = tracers["wave"]
    with tempfile.TemporaryDirectory(prefix="debatelab-bench-") as tmp:
        bank = write_bank(Path(tmp) / "bank.jsonl", settings.debates)
        for mode, wrapped, debates in (("one_at_a_time", OneAtATime(llm, tracers["one_at_a_time"]), serial),
                                       ("wave", recorder, settings.debates)):
            config = bench_config(settings, bank, debates)
            llm.clear_cache()
            before = cache_stats(llm)
            results[mode], transcripts[mode] = _run_mode(wrapped, config, Path(tmp) / mode)
            results[mode].prefix_cache = cache_delta(before, cache_stats(llm))
    return results, transcripts, tracers


def cache_stats(llm: LLM) -> dict[str, float]:
    return llm.cache_stats() or {}


def cache_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """What the prompt-prefix cache did during one mode (None: it was off or absent)."""
    delta = {k: after[k] - before.get(k, 0) for k in after if k != "reused_share"}
    if not delta.get("lookups"):
        return None
    delta["reused_share"] = delta["reused_tokens"] / delta["prompt_tokens"] if delta["prompt_tokens"] else 0.0
    return delta


def summarise(results: dict[str, ModeResult]) -> dict[str, Any]:
    """Per-mode rates, wave-over-one-at-a-time ratios, and ``speedup`` (the tokens/s ratio; the
    turns/s ratio for a backend that reports no tokens)."""
    modes = {m: r.as_dict() for m, r in results.items()}
    one, wave = modes["one_at_a_time"], modes["wave"]
    ratios = {k: _ratio(wave[k], one[k]) for k in ("tokens_per_s", "turns_per_s", "surveys_per_s", "peak_rss_mb")}
    key = "tokens_per_s" if one["completion_tokens"] else "turns_per_s"
    return {"modes": modes, "ratios": ratios, "speedup": ratios[key]}


def spread(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced over ``items`` (surveys before, during and after the debates)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def _warm_up(llm: LLM) -> None:
    """First calls pay one-off costs (kernel selection, allocator growth) that no mode should carry."""
    llm.generate([GenerateRequest(Prompt(text="Hello, my name is"), temperature=0.0, max_tokens=2)])
    llm.score_options([ScoreRequest(Prompt(text="Rate it: "), SURVEY_OPTIONS)])


def _run_mode(llm: LLM, config: Any, run_dir: Path) -> tuple[ModeResult, dict[str, Any]]:
    with PeakRss() as rss, Stopwatch() as clock:
        summary = run_experiment(config, run_dir, llm=llm)
    if summary.complete != summary.debates:
        raise RuntimeError(f"bench: only {summary.complete}/{summary.debates} debates completed")
    transcript = read_transcript(run_dir)
    tokens = sum(t[1] for t in transcript["turns"].values())
    return ModeResult(clock.seconds, len(transcript["turns"]), len(transcript["surveys"]), tokens,
                      rss.peak / 2**20), transcript


def compare_transcripts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Same seeds, so the same debates: count the debates of ``a`` whose every turn matches in
    ``b`` (which may hold more debates), and the survey gaps."""
    debates = {d for d, _ in a["turns"]}
    b = {part: {k: v for k, v in rows.items() if k[0] in debates} for part, rows in b.items()}
    differ = {d for (d, i) in a["turns"].keys() | b["turns"].keys() if a["turns"].get((d, i)) != b["turns"].get((d, i))}
    keys = a["surveys"].keys() & b["surveys"].keys()
    gaps = [abs(a["surveys"][k][1] - b["surveys"][k][1]) for k in keys
            if a["surveys"][k][1] is not None and b["surveys"][k][1] is not None]
    return {
        "debates": len(debates), "identical_debates": len(debates - differ),
        "transcripts_identical": not differ and a["turns"].keys() == b["turns"].keys(),
        "turns": len(a["turns"]), "surveys": len(keys),
        "survey_scores_equal": sum(a["surveys"][k][0] == b["surveys"][k][0] for k in keys),
        "survey_max_abs_diff_expected": max(gaps, default=0.0),
    }


def compare_survey_methods(llm: LLM, requests: list[ScoreRequest], max_tokens: int) -> dict[str, Any]:
    """The same survey prompts, one batched call each: greedy generation (parsed) vs option scoring."""
    as_text = [GenerateRequest(r.prompt, temperature=0.0, max_tokens=max_tokens, seed=r.seed) for r in requests]
    # Both from whole prompts: with the prefix cache on, whichever ran second would find the
    # other's prompts cached and compute almost nothing.
    with llm.without_cache(), Stopwatch() as gen_clock:
        answers = llm.generate(as_text)
    with llm.without_cache(), Stopwatch() as score_clock:
        scores = llm.score_options(requests)
    parsed = [parse_rating(a.text) for a in answers]
    argmax = [_argmax(s.logprobs) for s in scores]
    valid = [(p, m) for p, m in zip(parsed, argmax) if p is not None]
    gen_s, score_s = gen_clock.seconds / len(requests), score_clock.seconds / len(requests)
    return {
        "prompts": len(requests), "generate_s_per_survey": gen_s, "logprobs_s_per_survey": score_s,
        "survey_speedup": _ratio(gen_s, score_s), "generate_valid_share": len(valid) / len(requests),
        "generate_agrees_with_argmax": sum(p == m for p, m in valid) / len(valid) if valid else None,
    }


def _argmax(logprobs: tuple[float, ...]) -> int | None:
    probs = normalise(logprobs)
    return max(range(len(probs)), key=probs.__getitem__) if probs else None


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("inf")


def _workload(settings: BenchSettings) -> dict[str, Any]:
    data = {k: getattr(settings, k) for k in settings.__dataclass_fields__ if k != "backend"}
    data["one_at_a_time_debates"] = min(settings.one_at_a_time_debates, settings.debates)
    agents = len(ROSTER)
    return {**data, "backend": settings.backend.model_dump(exclude_defaults=True), "agents": agents,
            "in_flight": settings.debates, "turns_per_debate": agents * settings.rounds,
            "surveys_per_debate": agents * (settings.rounds + 1)}


def machine_facts(llm: LLM) -> dict[str, Any]:
    identity = llm.identity()
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(), "platform": platform.platform(), "python": sys.version.split()[0],
        "dtype": identity.get("dtype"), "model_identity": identity,
    }
    if "torch" in sys.modules:
        import torch

        facts.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                     cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor()
