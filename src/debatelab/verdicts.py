"""Where persona-fidelity verdicts (``check-model``) are kept, and the warning ``run`` and
``reproduce`` give on a model whose recorded verdict says it does not role-play partisans.

A verdict is recorded per model string in the debatelab cache directory each time
``check-model`` runs; the embedded model's verdict, measured when it became the default, also
ships with the package (``data/preflight/``), and a local check replaces it. A run never checks
a model itself (a check costs minutes); without a recorded verdict it says how to get one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Sequence

from .files import atomic_open, json_text
from .llm.embedded import cache_root

_warned: set[str] = set()


def verdict_dir() -> Path:
    """``DEBATELAB_VERDICTS`` if set (tests keep theirs apart), else ``<cache>/preflight``."""
    override = os.environ.get("DEBATELAB_VERDICTS")
    return Path(override) if override else cache_root() / "preflight"


def verdict_path(model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model)[:60]
    return verdict_dir() / f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:12]}.json"


def save_verdict(record: dict[str, Any]) -> Path:
    """Record ``record`` as its model's latest verdict; OSError when the folder cannot be written."""
    path = verdict_path(record["model"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        fh.write(json_text(record))
    return path


def recorded_verdict(model: str) -> dict[str, Any] | None:
    """The latest local verdict for ``model``, else the shipped one, else None."""
    local = verdict_path(model)
    candidates = [local.read_text(encoding="utf-8")] if local.is_file() else []
    shipped = files("debatelab") / "data" / "preflight" / f"{model}.json"
    if not candidates and re.fullmatch(r"[a-z0-9-]+", model) and shipped.is_file():
        candidates.append(shipped.read_text(encoding="utf-8"))
    for text in candidates:
        try:
            record = json.loads(text)
        except ValueError:
            continue  # a damaged cache file is no verdict
        if isinstance(record, dict) and isinstance(record.get("topics"), list):
            return record
    return None


def fidelity_warning(model: str, topics: Sequence[str]) -> str | None:
    """A loud one-paragraph warning when ``model``'s recorded verdict fails on any of ``topics``;
    None when it passes on them all, has no verdict, or was warned about already in this process."""
    if model in _warned:
        return None
    record = recorded_verdict(model)
    if record is None:
        return None
    failing = [t["topic"] for t in record["topics"] if isinstance(t, dict) and t.get("topic") in topics
               and not t.get("role_plays")]
    if not failing:
        return None
    _warned.add(model)
    return (f"WARNING: {model} does not role-play partisans on {', '.join(failing)}: its persona-fidelity check "
            f"({record.get('checked_at') or 'date unknown'}) found no separation there, or the wrong direction "
            f"(verdict: {record.get('verdict', '?')}). On these topics its Republican and Democrat agents answer "
            "alike, so attitude changes measure noise, not the paper's effects. Re-check with: "
            f"debatelab check-model {model}")


def fidelity_line(model: str) -> str | None:
    """One line for reports: the recorded verdict of ``model`` with its date, or None."""
    record = recorded_verdict(model) if model else None
    if record is None:
        return None
    return f"{model}: {record.get('verdict', '?')} (checked {record.get('checked_at') or 'at an unknown time'})"
