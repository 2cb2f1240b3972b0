"""Row checks and document hooks for the debatelab lm-eval task templates.

``debatelab.finetune.benchmarks`` copies this file next to the generated YAMLs (lm-eval imports it
by path from the include folder), so it depends on nothing but the standard library.
"""

from __future__ import annotations

import re
from typing import Any


def preprocess(text: str) -> str:
    """lm-eval's HellaSwag clean-up: strip, drop WikiHow ``[title]``/``[...]`` artefacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """One HellaSwag row as ``query``/``choices``/``gold``.

    The context is ``ctx_a + " " + ctx_b.capitalize()`` when both are present (as in lm-eval's
    ``hellaswag``), otherwise ``ctx``; a non-empty ``activity_label`` is prefixed as ``"label: "``.
    """
    if doc.get("ctx_a") is not None and doc.get("ctx_b") is not None:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    else:
        ctx = doc["ctx"]
    label = doc.get("activity_label")
    query = f"{label}: {ctx}" if label else ctx
    return {
        "query": preprocess(query),
        "choices": [preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def process_hellaswag(dataset: Any) -> Any:
    """``process_docs`` hook: map every row of a ``datasets.Dataset`` through :func:`hellaswag_doc`."""
    return dataset.map(hellaswag_doc)


def _four_strings(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(isinstance(v, str) for v in value)


def _index(value: Any) -> int | None:
    if isinstance(value, str) and value in ("0", "1", "2", "3"):
        return int(value)
    return value if type(value) is int and 0 <= value <= 3 else None


def mmlu_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with an MMLU row, or None: ``question``, 4 ``choices``, integer ``answer``."""
    if not isinstance(row.get("question"), str) or not _four_strings(row.get("choices")):
        return "an MMLU row needs 'question' and 4 string 'choices'"
    if type(row.get("answer")) is not int or _index(row["answer"]) is None:
        return f"'answer' must be an integer 0-3, got {row.get('answer')!r}"
    if not isinstance(row.get("subject", ""), str):
        return "'subject' must be a string"
    return None


def hellaswag_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a HellaSwag row, or None: ``ctx`` or ``ctx_a``+``ctx_b``, 4 ``endings``,
    ``label`` 0-3 (integer or digit string), optional string ``activity_label``."""
    has_ab = isinstance(row.get("ctx_a"), str) and isinstance(row.get("ctx_b"), str)
    if not (has_ab or isinstance(row.get("ctx"), str)) or not _four_strings(row.get("endings")):
        return "a HellaSwag row needs 'ctx' (or 'ctx_a'+'ctx_b') and 4 string 'endings'"
    if _index(row.get("label")) is None:
        return f"'label' must be 0-3, got {row.get('label')!r}"
    if not isinstance(row.get("activity_label") or "", str):
        return "'activity_label' must be a string"
    return None
