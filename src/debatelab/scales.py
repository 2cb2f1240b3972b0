"""Survey answer scales: the paper's 0-10 rating and Pew's 4-point "how much of a problem" item.

A score is always an index into the scale's ``labels`` (ascending: 0 is the least severe), and
option scoring asks for ``options`` in that same order, so a stored distribution's index i is the
probability of score i on either scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ScaleId = Literal["0-10", "pew4"]


@dataclass(frozen=True)
class Scale:
    id: str
    labels: tuple[str, ...]
    """What each score means, index = score, least severe first."""
    options: tuple[str, ...]
    """The continuation option scoring asks for each score (same order as ``labels``)."""

    @property
    def top(self) -> int:
        """The highest score (10, or 3 on Pew's scale)."""
        return len(self.labels) - 1

    @property
    def midpoint(self) -> float:
        return self.top / 2


ZERO_TEN = Scale("0-10", labels=tuple(str(i) for i in range(11)), options=tuple(str(i) for i in range(11)))
PEW4 = Scale("pew4", labels=("not a problem at all", "a small problem", "a moderately big problem",
                             "a very big problem"),
             options=("D", "C", "B", "A"))  # the prompt letters Pew's order: A = "a very big problem"
SCALES: dict[str, Scale] = {s.id: s for s in (ZERO_TEN, PEW4)}
VERY_BIG = PEW4.top
"""The score of "a very big problem" on Pew's scale."""


def scale_of(config: Any) -> Scale:
    """The survey scale of a stored run config (a dict); runs made before scales existed are 0-10."""
    survey = (config.get("survey") or {}) if isinstance(config, dict) else {}
    return SCALES.get(survey.get("scale") or "0-10", ZERO_TEN)
