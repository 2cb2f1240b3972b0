"""What a remote backend's requests went through in a run: retries, rate limits (429), requests
that failed for good, and how its surveys were scored (exactly, from the top-k alternatives, or
parsed from a greedy answer). Counted per model by the backend (``Usage.extra``), summed here over
every session of the run (the first run and each resume) into the run's meta ``requests``, and
said in the run summary and the report. Backends without network requests count nothing and are
left out; so are the models of a Ray run, whose counters live in its workers."""

from __future__ import annotations

import json
from typing import Any, Mapping

from .llm.base import LLM, REQUEST_COUNTERS

Counts = dict[str, dict[str, Any]]
META_KEY = "requests"


def snapshot(llms: Mapping[str, LLM], model: str) -> Counts:
    """Per model key ("" = the experiment's ``model``): the counters its backend keeps now. A
    backend serving several keys is counted once, under the first."""
    out: Counts = {}
    seen: set[int] = set()
    for key in sorted(llms):
        usage = llms[key].usage
        if usage is None or id(usage) in seen or not any(name in usage.extra for name in REQUEST_COUNTERS):
            continue
        seen.add(id(usage))
        out[key] = {"model": key or model, "calls": usage.calls,
                    **{name: int(usage.extra.get(name, 0)) for name in REQUEST_COUNTERS}}
    return out


def since(now: Counts, before: Counts) -> Counts:
    """What was counted between two snapshots (a backend passed in may have counted before)."""
    return {key: {"model": entry["model"],
                  **{n: entry[n] - before.get(key, {}).get(n, 0) for n in ("calls", *REQUEST_COUNTERS)}}
            for key, entry in now.items()}


def add_session(stored: str | None, session: Counts) -> Counts:
    """The run's totals (stored JSON, or none yet) with one more session's counts added; a session
    that sent its backend nothing (a resume of a finished run) adds nothing, not even a session."""
    totals: Counts = _read(stored)
    for key, counts in session.items():
        if not counts["calls"]:
            continue
        entry = totals.setdefault(key, {"model": counts["model"], "sessions": 0})
        for name in ("calls", *REQUEST_COUNTERS):
            entry[name] = int(entry.get(name, 0)) + counts[name]
        entry["sessions"] = int(entry.get("sessions", 0)) + 1
    return totals


def _read(stored: str | None) -> Counts:
    try:
        value = json.loads(stored) if stored else {}
    except ValueError:
        return {}
    return {k: dict(v) for k, v in value.items() if isinstance(v, dict)} if isinstance(value, dict) else {}


def request_lines(totals: Any) -> list[str]:
    """One line per model: ``requests (MODEL): 2 retries, 1 rate-limited (429), 0 failed for good;
    surveys: 30 exact, 2 from top-k log-probabilities, 1 parsed from a greedy answer``."""
    if not isinstance(totals, dict):
        return []
    lines = []
    for entry in totals.values():
        if not isinstance(entry, dict):
            continue
        n = {name: int(entry.get(name, 0)) for name in REQUEST_COUNTERS}
        sessions = int(entry.get("sessions", 1))
        over = f" over {sessions} sessions" if sessions > 1 else ""
        lines.append(f"requests ({entry.get('model', '?')}{over}): {n['retries']} retries, {n['rate_limited']} "
                     f"rate-limited (429), {n['failed_requests']} failed for good; surveys: {n['survey_exact']} "
                     f"exact, {n['survey_top_k']} from top-k log-probabilities, {n['survey_fallbacks']} parsed "
                     "from a greedy answer")
    return lines
