"""``debatelab bench --society``: one society run, timed step by step, its memory sampled.

The run is a real one (:func:`debatelab.experiment.run_experiment` on a society config, into a
temporary run directory unless ``run_dir`` is given). A thread samples the resident set size every
``sample_interval`` seconds; a thin wrapper around the model stamps the end of each step's panel
survey (the last survey request of step s is answered once (population + probes at step 0) x
topics requests have been); the counts come from the run's own exports (``encounters.csv``,
``debates.csv``). ``memory_growth_mb`` is the flatness figure: the peak RSS over the last third of
steps 1..S minus the peak over the first third. On a transformers model, ``roofline`` holds each
step's strictly needed matmul work, its time at the measured matmul peak and the efficiency
(:mod:`.roofline`); the same wrapper traces the calls, one tally per step on one perfect cache.
"""

from __future__ import annotations

import csv
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from ..errors import DebatelabError
from ..experiment import run_experiment
from ..llm.base import LLM, GenerateRequest, OptionScores, Prompt, ScoreRequest
from ..llm.options import BackendOptions
from ..llm.registry import load_llm
from ..prompts import SURVEY_OPTIONS
from ..society.config import SocietyConfig
from ..society.engine import PROBES
from ..society.network import check_network
from ..validation import describe
from .core import cache_delta, cache_stats, machine_facts
from .roofline import (COUNTED, Tracer, bounded, computed_tokens, merged, model_bandwidth, model_peak,
                       tracer_for)
from .workload import TOPIC, TracedWrapper, current_rss, write_bank

_MB = 2**20


@dataclass(frozen=True)
class SocietyBenchSettings:
    """One society: ``population`` agents on a ``network``, ``steps`` steps of encounters."""

    model: str = "embedded"
    population: int = 200
    steps: int = 3
    memory: str = "turns"
    network: str = "watts_strogatz"
    degree: float = 6.0
    encounter_size: int = 2
    rounds: int = 1
    """Round-robin cycles per encounter."""
    max_tokens: int = 32
    temperature: float = 0.7
    per_party: int = 40
    """Personas per party in the bank (agents cycle through them)."""
    seed: int = 0
    sample_interval: float = 0.1
    """Seconds between RSS samples."""
    run_dir: Path | None = None
    """Where the run goes and stays (None: a temporary directory, removed afterwards)."""
    backend: BackendOptions = field(default_factory=BackendOptions)


def check_mode_options(society: bool, society_options: dict[str, object], plain_options: dict[str, object]) -> None:
    """``bench`` options of one mode given to the other: one line (exit 2)."""
    stray = sorted(plain_options if society else society_options)
    if stray:
        flag = "--" + stray[0].replace("_", "-")
        raise DebatelabError(f"{flag} is not an option of --society" if society else f"{flag} needs --society")


def society_config(settings: SocietyBenchSettings, bank: Path | None) -> SocietyConfig:
    """The bench's society config (one topic); a bad setting is one line (exit 2)."""
    data = {"name": "bench-society", "model": settings.model, "backend": settings.backend, "topics": [TOPIC],
            "seed": settings.seed, "personas": bank,
            "reply": {"temperature": settings.temperature, "max_tokens": settings.max_tokens},
            "society": {"population": settings.population, "steps": settings.steps, "memory": settings.memory,
                        "encounter_size": settings.encounter_size, "rounds": settings.rounds,
                        "network": {"kind": settings.network, "degree": settings.degree}}}
    try:
        config = SocietyConfig.model_validate(data)
    except ValidationError as exc:
        raise DebatelabError(f"invalid society bench: {describe(exc)}") from None
    check_network(config.society.network, config.society.population)
    return config


class RssTimeline:
    """Samples the resident set size in a thread: ``samples`` of (perf_counter seconds, bytes)."""

    def __init__(self, interval: float):
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self, at: float | None = None) -> None:
        """One sample, stamped ``at`` (default now); list.append is atomic."""
        self.samples.append((time.perf_counter() if at is None else at, current_rss()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "RssTimeline":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def peak(self, start: float, end: float) -> int:
        """The highest sample in [start, end]; without one, the first after it (else the last)."""
        inside = [rss for t, rss in self.samples if start <= t <= end]
        if inside:
            return max(inside)
        after = [rss for t, rss in self.samples if t > end]
        return after[0] if after else (self.samples[-1][1] if self.samples else 0)


class StepClock(TracedWrapper):
    """Forwards every call unchanged; stamps the time (and samples RSS) when the survey requests
    answered so far reach each step's cumulative total (``thresholds``). ``tracer`` (None: off)
    replays the calls into the roofline's needed work, one tally per step."""

    def __init__(self, inner: LLM, thresholds: Sequence[int], rss: RssTimeline, tracer: Tracer | None = None):
        super().__init__(inner, tracer)
        self.thresholds, self.rss = list(thresholds), rss
        self.surveyed = 0
        self.ends: list[float] = []
        self._mixed = 0

    def _count(self, n: int) -> None:
        self.surveyed += n
        while len(self.ends) < len(self.thresholds) and self.surveyed >= self.thresholds[len(self.ends)]:
            now = time.perf_counter()
            self.ends.append(now)
            self.rss.sample(now)  # each step's window holds its closing sample
            if self.tracer is not None:  # the call that closed the step was traced into it
                self.tracer.split()

    def score_options(self, requests: Sequence[ScoreRequest]) -> list[OptionScores]:
        out = super().score_options(requests)
        if not self._mixed:  # a mixed call that falls back to the views' own calls counts once
            self._count(len(requests))
        return out

    def score_options_mixed(self, parts: Sequence[tuple[LLM, Sequence[ScoreRequest]]]) -> list[list[OptionScores]]:
        self._mixed += 1
        try:
            out = super().score_options_mixed(parts)
        finally:
            self._mixed -= 1
        self._count(sum(len(r) for _, r in parts))
        return out


def survey_thresholds(config: SocietyConfig) -> list[int]:
    """Survey requests answered by the end of each step's panel (step 0 with its probes)."""
    topics, population = len(config.resolved_topics()), config.society.population
    first = (population + PROBES) * topics
    return [first + s * population * topics for s in range(config.society.steps + 1)]


def run_society_bench(settings: SocietyBenchSettings, llm: LLM | None = None) -> dict[str, Any]:
    """Run the society once and measure it; the report as a JSON-ready dict."""
    society_config(settings, None)  # a bad setting fails before the model loads
    if settings.run_dir is not None and settings.run_dir.exists() and any(settings.run_dir.iterdir()):
        raise DebatelabError(f"{settings.run_dir} is not empty: the bench times a fresh run")
    own = llm is None
    llm = llm or load_llm(settings.model, settings.backend)
    try:
        with tempfile.TemporaryDirectory(prefix="debatelab-bench-society-") as tmp:
            bank = write_bank(Path(tmp) / "bank.jsonl", settings.per_party)
            config = society_config(settings, bank)
            run_dir = settings.run_dir or Path(tmp) / "run"
            report = _measure(config, llm, run_dir, settings.sample_interval)
        report["workload"] = _workload(settings)
        report["machine"] = machine_facts(llm)
        return report
    finally:
        if own:
            llm.close()


def _warm_up(llm: LLM) -> None:
    """One-off costs (kernel selection, allocator growth) before the clock starts."""
    llm.generate([GenerateRequest(Prompt(text="Hello, my name is"), temperature=0.0, max_tokens=2)])
    llm.score_options([ScoreRequest(Prompt(text="Rate it: "), SURVEY_OPTIONS)])
    llm.clear_cache()


def _measure(config: SocietyConfig, llm: LLM, run_dir: Path, interval: float) -> dict[str, Any]:
    _warm_up(llm)
    cache_before, usage_before = cache_stats(llm), _usage(llm)
    tracer = tracer_for(llm)
    with RssTimeline(interval) as rss:
        clock = StepClock(llm, survey_thresholds(config), rss, tracer)
        start = time.perf_counter()
        summary = run_experiment(config, run_dir, llm=clock)
        end = time.perf_counter()
    counts = step_counts(run_dir, config.society.steps)
    bounds = [start, *clock.ends[:config.society.steps + 1]]
    bounds += [end] * (config.society.steps + 2 - len(bounds))  # a run stopped early: the rest empty
    steps = [{"step": s, "seconds": bounds[s + 1] - bounds[s], **counts[s],
              "peak_rss_mb": rss.peak(bounds[s], bounds[s + 1]) / _MB} for s in range(config.society.steps + 1)]
    usage = _usage(llm)
    tokens = {k: usage[k] - usage_before[k] for k in usage} if usage and usage_before else None
    cache = cache_delta(cache_before, cache_stats(llm))
    return {**_totals(steps, end - start, summary.complete == summary.debates),
            "roofline": step_rooflines(tracer, [s["seconds"] for s in steps], cache),
            "agents": (summary.society or {}).get("agents"), "edges": (summary.society or {}).get("edges"),
            "start_rss_mb": rss.samples[0][1] / _MB, "peak_rss_mb": max(r for _, r in rss.samples) / _MB,
            "export": {"seconds": end - bounds[-1], "peak_rss_mb": rss.peak(bounds[-1], end) / _MB},
            "memory_growth_mb": memory_growth(steps), "per_step": steps, "tokens": tokens, "prefix_cache": cache,
            "prompt_tokens_reused_share": cache["reused_share"] if cache else None}


def step_rooflines(tracer: Tracer | None, seconds: list[float], cache: dict[str, float] | None,
                   shapes: Sequence[tuple[int, int, int]] | None = None) -> dict[str, Any] | None:
    """Per step (``seconds``: each step's measured time) and in total: needed work, bounds and
    efficiencies against the measured matmul peak and read bandwidth; None without a tracer (not a
    transformers model). The total's computed prompt tokens come from the run's prefix-cache delta
    (not kept per step)."""
    if tracer is None:
        return None
    peak, bandwidth = model_peak(tracer.backend, shapes), model_bandwidth(tracer.backend)
    roofs = (peak["gflops"], bandwidth["gb_s"])
    works = tracer.works[:len(seconds)]
    works += [tracer.work.fork() for _ in range(len(seconds) - len(works))]  # a run stopped early
    steps = [{"step": s, **bounded(w, roofs[0], t, roofs[1])} for s, (w, t) in enumerate(zip(works, seconds))]
    whole = merged(tracer.works)  # calls after the last panel (none in a complete run) count in the total
    total = {**bounded(whole, roofs[0], sum(seconds), roofs[1]),
             "computed_prompt_tokens": computed_tokens(whole, cache), "trace_s": tracer.seconds}
    return {"peak": peak, "bandwidth": bandwidth, "model": whole.shape.as_dict(), "counted": COUNTED, "steps": steps,
            "total": total}


def _usage(llm: LLM) -> dict[str, int] | None:
    usage = llm.usage
    return None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                       "completion_tokens": usage.completion_tokens, "calls": usage.calls}


def _totals(steps: list[dict[str, Any]], seconds: float, complete: bool) -> dict[str, Any]:
    total = {k: sum(s[k] for s in steps) for k in ("encounters", "replies", "notes", "surveys", "incomplete")}
    per_s = max(seconds, 1e-9)
    return {"steps": len(steps) - 1, **total, "seconds": seconds, "complete": complete and not total["incomplete"],
            "encounters_per_s": total["encounters"] / per_s, "surveys_per_s": total["surveys"] / per_s,
            "replies_per_s": total["replies"] / per_s}


def memory_growth(steps: list[dict[str, Any]]) -> float:
    """Peak RSS (MB) of the last third of steps 1..S minus that of the first third (0 for S = 1)."""
    later = steps[1:]
    if len(later) < 2:
        return 0.0
    third = max(1, len(later) // 3)
    return max(s["peak_rss_mb"] for s in later[-third:]) - max(s["peak_rss_mb"] for s in later[:third])


def step_counts(run_dir: Path, steps: int) -> list[dict[str, int]]:
    """Per step, from the exports: encounters, their replies, notes (memory ``summary``), panel
    surveys, and units not complete."""
    counts = [{"encounters": 0, "replies": 0, "notes": 0, "surveys": 0, "incomplete": 0} for _ in range(steps + 1)]
    encounters = set()
    for row in _rows(run_dir / "encounters.csv"):
        encounters.add(row["debate_id"])
        counts[int(row["step"])]["encounters"] += 1
    for row in _rows(run_dir / "debates.csv"):
        step = counts[int(row["repetition"])]  # a society unit's repetition is its step
        turns = int(row["turns"])
        step["replies" if row["debate_id"] in encounters else "notes"] += turns
        step["surveys"] += int(row["surveys"])
        step["incomplete"] += row["status"] != "complete"
    return counts


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _workload(settings: SocietyBenchSettings) -> dict[str, Any]:
    data = {k: getattr(settings, k) for k in settings.__dataclass_fields__ if k not in ("backend", "run_dir")}
    return {**data, "topic": TOPIC, "backend": settings.backend.model_dump(exclude_defaults=True),
            "run_dir": str(settings.run_dir) if settings.run_dir else None}


def format_society_report(report: dict[str, Any]) -> str:
    """The report as a compact table for the terminal."""
    w, m, roof = report["workload"], report["machine"], report.get("roofline")
    lines = [
        f"society: {report['agents']:,} agents ({report['edges']:,} edges, {w['network']}, degree {w['degree']:g}) "
        f"x {report['steps']} steps; encounters of {w['encounter_size']}, {w['rounds']} round(s), "
        f"memory {w['memory']}, replies <= {w['max_tokens']} tokens",
        f"model: {w['model']} ({m.get('dtype') or 'dtype n/a'}); {m['cpu_count']} CPUs ({m['cpu_model']})",
        "",
        f"{'step':>6}{'seconds':>9}{'encounters':>12}{'replies':>9}{'surveys':>9}{'peak RSS MB':>13}"
        + (f"{'GFLOP':>10}{'bound s':>9}{'eff.':>7}{'KV GB':>8}{'mem s':>8}{'roof eff.':>10}" if roof else ""),
    ]
    for i, s in enumerate(report["per_step"]):
        lines.append(f"{s['step']:>6}{s['seconds']:>9.2f}{s['encounters']:>12,}{s['replies'] + s['notes']:>9,}"
                     f"{s['surveys']:>9,}{s['peak_rss_mb']:>13.0f}" + (_roof_cells(roof["steps"][i]) if roof else ""))
    e = report["export"]
    lines.append(f"{'export':>6}{e['seconds']:>9.2f}{'':>39}{e['peak_rss_mb']:>13.0f}")
    lines += ["", f"total: {report['seconds']:.1f} s; {report['encounters']:,} encounters "
              f"({report['encounters_per_s']:,.1f}/s), {report['surveys']:,} surveys "
              f"({report['surveys_per_s']:,.1f}/s), "
              f"{report['replies']:,} replies ({report['replies_per_s']:,.1f}/s)"
              + (f", {report['notes']:,} notes" if report["notes"] else ""),
              f"memory: peak RSS {report['peak_rss_mb']:.0f} MB (start {report['start_rss_mb']:.0f} MB); growth "
              f"from the first to the last third of steps {report['memory_growth_mb']:+.1f} MB",
              _cache_line(report), *_roofline_lines(roof)]
    if not report["complete"]:
        lines.append(f"WARNING: {report['incomplete']} unit(s) did not complete")
    return "\n".join(lines)


def _eff(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _roof_cells(r: dict[str, Any]) -> str:
    memory = (f"{r['kv_read_gb']:>8.2f}{r['memory_bound_s']:>8.3f}{_eff(r['roofline_efficiency']):>10}"
              if "memory_bound_s" in r else f"{'':>26}")  # a report measured before the memory roof
    return f"{r['needed_gflop']:>10,.1f}{r['bound_s']:>9.3f}{_eff(r['efficiency']):>7}" + memory


def _roofline_lines(roof: dict[str, Any] | None) -> list[str]:
    if roof is None:
        return ["roofline: not available for this backend (transformers backends only)"]
    p, t = roof["peak"], roof["total"]
    lines = [f"roofline: {t['needed_gflop']:,.1f} GFLOP needed (matmuls, perfect prefix cache) at the measured peak "
             f"of {p['gflops']:,.1f} GFLOP/s ({p['dtype']}, {p['threads']} thread(s)) -> bound {t['bound_s']:.3f} s of "
             f"{t['measured_s']:.2f} s in steps, efficiency {_eff(t['efficiency'])}; prompt tokens "
             f"{t['prompt_tokens']:,} sent, {t['needed_prompt_tokens']:,} needed (reuse bound "
             f"{100 * t['reuse_bound_share']:.0f} %), {t['computed_prompt_tokens']:,} computed"]
    if "memory_bound_s" in t:
        lines.append(f"memory roof: {t['kv_read_gb']:,.2f} GB of key/value reads (decoding) at the measured "
                     f"{roof['bandwidth']['gb_s']:,.1f} GB/s -> {t['memory_bound_s']:.3f} s; roofline bound (the "
                     f"larger roof) {t['roofline_bound_s']:.3f} s, efficiency {_eff(t['roofline_efficiency'])}")
    return lines


def _cache_line(report: dict[str, Any]) -> str:
    c = report["prefix_cache"]
    if not c:
        return "prompt-prefix cache: off or not kept by this backend"
    return (f"prompt-prefix cache: {100 * c['reused_share']:.0f} % of {int(c['prompt_tokens']):,} prompt tokens "
            f"reused ({int(c['hits']):,}/{int(c['lookups']):,} prompts hit, {int(c['evictions']):,} evicted)")
