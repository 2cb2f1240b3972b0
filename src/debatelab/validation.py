"""The base of every user-facing pydantic model, and the one way a validation error is told."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

# Parts pydantic adds to an error's location for the branch of a union or a constrained type;
# the user never wrote them.
_TAGS = frozenset({"str", "constrained-str", "int", "float", "bool", "none", "Topic", "Seat", "DPOSettings"})


class StrictModel(BaseModel):
    """Frozen, unknown keys rejected, floats finite: the base of every user-facing config."""

    # allow_inf_nan=False: .inf and .nan are refused in every float field (temperature, top_p, ...).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def describe(exc: ValidationError) -> str:
    """'field.path: problem' on one line, and how many other fields have problems.

    In a union (a topic id or an inline topic) the deepest error is the informative one."""
    errors = exc.errors()
    err = max(errors, key=lambda e: len(e["loc"]))
    where = _where(err["loc"])
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    text = msg if not where or msg.startswith(f"{where}:") else f"{where}: {msg}"
    more = len({e["loc"][:1] for e in errors} - {err["loc"][:1]})
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _where(loc: tuple[object, ...]) -> str:
    return ".".join(_loc_part(p) for p in loc if p not in _TAGS)


def _loc_part(part: object) -> str:
    """A location part as the user wrote it; an odd key (spaces, control characters, very
    long) in its repr, cut short, so the message stays one readable line."""
    text = str(part)
    if isinstance(part, str) and not (text.replace("_", "").replace("-", "").isalnum() and len(text) <= 60):
        text = repr(part) if len(repr(part)) <= 60 else repr(part)[:57] + "..."
    return text
