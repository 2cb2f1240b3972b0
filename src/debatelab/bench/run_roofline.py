"""The roofline of a whole run: ``python -m debatelab.bench.run_roofline CONFIG --out DIR``.

Runs (or resumes) an experiment config as ``debatelab run`` does (the same engine, store and
exports), with the backend wrapped in the bench's tracer, and prints one JSON object: the model's
load time, the run's wall time, the process's peak resident memory over both, and the run's
needed work (:mod:`debatelab.bench.roofline`: a perfect prefix cache, attention at the real
context lengths) against the matmul peak measured on the spot, so the bound, the measured time
and the efficiency of a real run (e.g. all of Figure 3) sit in one report. A resumed run's
roofline covers what this invocation computed. Backends without a tracer (scripted, opinion-sim,
OpenAI-compatible) report ``"roofline": null``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, load_config
from ..errors import DebatelabError
from ..experiment import run_experiment
from ..llm.base import LLM
from ..llm.registry import load_llm
from ..store import lock_run_dir
from .core import machine_facts
from .roofline import bounded, computed_tokens, model_bandwidth, model_peak, tracer_for
from .workload import PeakRss, Stopwatch, TracedWrapper


def traced_run(config: ExperimentConfig, run_dir: Path, llm: LLM | None = None) -> dict[str, Any]:
    """Run ``config`` into ``run_dir`` on ``llm`` (loaded from the config when None, under the
    run directory's lock) and report its time, peak memory and roofline."""
    lock = lock_run_dir(run_dir)
    try:
        with PeakRss() as rss:
            with Stopwatch() as load:
                llm = llm or load_llm(config.model, config.backend)
            tracer = tracer_for(llm)
            with Stopwatch() as run:
                summary = run_experiment(config, run_dir, llm=TracedWrapper(llm, tracer), lock=lock)
    finally:
        lock.release()
    report: dict[str, Any] = {
        "run_dir": str(run_dir), "debates": summary.debates, "complete": summary.complete,
        "load_s": load.seconds, "run_s": run.seconds, "peak_rss_gib": rss.peak / 2**30,
        "admission": config.admission, "max_in_flight": config.max_in_flight,
        "prefix_cache": llm.cache_stats(), "roofline": None, "machine": machine_facts(llm),
    }
    if tracer is not None:
        peak, bandwidth = model_peak(tracer.backend), model_bandwidth(tracer.backend)
        report["roofline"] = {"peak": peak, "bandwidth": bandwidth,
                              **bounded(tracer.work, peak["gflops"], run.seconds, bandwidth["gb_s"]),
                              "computed_prompt_tokens": computed_tokens(tracer.work, llm.cache_stats()),
                              "trace_s": tracer.seconds}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m debatelab.bench.run_roofline", description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--repetitions", type=int, help="override the config's repetitions")
    parser.add_argument("--max-in-flight", type=int, help="override the config's max_in_flight")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, repetitions=args.repetitions, max_in_flight=args.max_in_flight)
        report = traced_run(config, args.out)
    except DebatelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
