"""One model, three paths, one workload: the embedded SmolLM2 GGUF in process and through
llama.cpp's OpenAI-compatible server (scripts/setup_llama_server.sh), run side by side.

The workload is issue 17's: 8 three-way debates (Republican, Democrat, Default; 2 topics x 4
repetitions), 2 rounds, surveys as distributions (``method: logprobs``), the same persona bank
(written once, from the in-process model) on every path. For each path it prints the wall time,
the mean expected score at iteration 0 by role, the mean option mass, the surveys without a
distribution, and how many prompts are hash-identical to the in-process run's.

    .venv/bin/python scripts/llama_server_bench.py [--out DIR] [--paths embedded,completions,...]

Paths: embedded (in process); completions (chat template rendered here, top-100 alternatives,
concurrency 1); completions-c8 (the same at concurrency 8); flat (completions without a
template, OpenAI's top 5: the issue's old path); chat (the server's template, prefix as
instruction, top 20). Takes about 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVER_PYTHON = ROOT / ".venv-llama" / "bin" / "python"
SERVER = {"api_key_env": "DEBATELAB_BENCH_KEY", "timeout": 300}
PATHS = {
    "embedded": ("embedded", {}),
    "completions": ("openai:smollm2", {**SERVER, "api": "completions", "tokenizer": "embedded", "logprobs_cap": 100,
                                       "concurrency": 1}),
    "completions-c8": ("openai:smollm2", {**SERVER, "api": "completions", "tokenizer": "embedded",
                                          "logprobs_cap": 100, "concurrency": 8}),
    "flat": ("openai:smollm2", {**SERVER, "api": "completions", "chat_template": "none", "concurrency": 1}),
    "chat": ("openai:smollm2", {**SERVER, "api": "chat", "concurrency": 1}),
}


def start_server(gguf: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(SERVER_PYTHON), "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--chat_format", "chatml"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    raise SystemExit(f"llama.cpp server did not start; see {log}")


def config(model: str, backend: dict, bank: Path) -> dict:
    return {"model": model, "topics": ["climate_change", "gun_violence"], "agents": ["republican", "democrat", "default"],
            "rounds": 2, "repetitions": 4, "seed": 0, "personas": str(bank), "backend": backend,
            "reply": {"temperature": 0.7, "max_tokens": 64}, "survey": {"method": "logprobs"}}


def run_path(name: str, model: str, backend: dict, out: Path, bank: Path) -> dict:
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config(model, backend, bank)))
    run_dir = out / name
    start = time.monotonic()
    subprocess.run([str(Path(sys.executable).parent / "debatelab"), "run", str(path), "--out", str(run_dir), "--quiet"], check=True)
    seconds = time.monotonic() - start
    import debatelab

    surveys = debatelab.load(run_dir).surveys
    first = surveys[surveys.iteration == 0]
    by_role = first.groupby("role").expected_score.mean().to_dict()
    return {"path": name, "seconds": round(seconds, 1), "expected_iteration0": {k: round(v, 2) for k, v in by_role.items()},
            "option_mass": round(float(surveys.option_mass.mean()), 3),
            "no_distribution": int(surveys.expected_score.isna().sum()), "surveys": int(len(surveys)),
            "sources": surveys.source.value_counts().to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "llama-server-bench")
    parser.add_argument("--paths", default="embedded,completions,completions-c8,flat,chat")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the configs written there name the bank by absolute path
    if not SERVER_PYTHON.is_file():
        raise SystemExit("llama.cpp server not installed: run scripts/setup_llama_server.sh")
    from debatelab.llm.embedded import find_gguf
    from debatelab.llm.registry import load_llm
    from debatelab.personas import generate_personas, save_bank
    from debatelab.topics import BUILTIN_TOPICS

    args.out.mkdir(parents=True, exist_ok=True)
    bank = args.out / "bank.jsonl"
    if not bank.exists():
        llm = load_llm("embedded")
        topics = [BUILTIN_TOPICS["climate_change"], BUILTIN_TOPICS["gun_violence"]]
        save_bank(generate_personas(llm, "embedded", {"republican": 4, "democrat": 4}, 0, topics=topics), bank)
    os.environ["DEBATELAB_BENCH_KEY"] = "sk-local-llama-server"
    server, url = start_server(str(find_gguf()), args.out / "server.log")
    results = []
    try:
        for name in args.paths.split(","):
            model, backend = PATHS[name]
            backend = {**backend, "base_url": url} if model.startswith("openai:") else backend
            results.append(run_path(name, model, backend, args.out, bank))
            print(json.dumps(results[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    from debatelab.analysis import prompt_identity

    base = args.out / "embedded"
    for r in results:
        if base.exists() and r["path"] != "embedded":
            r["prompt_identity"] = prompt_identity(base, args.out / r["path"])
    from debatelab.bench.core import _cpu_model

    summary = {"cpu": _cpu_model(), "cores": os.cpu_count(), "results": results}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
