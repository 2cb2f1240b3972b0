"""Human reference figures (Pew Research Center, June 2023) shipped as package data, with their
sources and caveats: the yardsticks agents' attitudes are read against (issue 13).

Only what was published is here: per topic, the share of each party answering "a very big
problem" on Pew's 4-point scale, one all-adults distribution over the four options, and other
waves for cross-checking. ``None`` marks a figure that was not found; it is never filled in.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import Literal

import yaml
from pydantic import Field, model_validator

from .topics import BUILTIN_TOPICS
from .validation import StrictModel

Percent = float | None
Group = Literal["all_adults", "republican", "democrat"]


class PewSurvey(StrictModel):
    """The survey the figures come from: who was asked what, when."""

    name: str
    fielded: str
    respondents: int = Field(gt=0)
    citation: str
    question: str
    options: tuple[str, str, str, str]
    """Pew's four answer options, from "A very big problem" to "Not a problem at all"."""


class VeryBigShares(StrictModel):
    """Percent answering "a very big problem", per group, with the report that quoted them."""

    all_adults: Percent = Field(ge=0, le=100)
    republican: Percent = Field(ge=0, le=100)
    democrat: Percent = Field(ge=0, le=100)
    source: str = Field(min_length=1)


class Distribution(StrictModel):
    """One group's answers over all four options, in percent (they sum to 100)."""

    topic: str
    group: Group
    very_big: float = Field(ge=0, le=100)
    moderately_big: float = Field(ge=0, le=100)
    small: float = Field(ge=0, le=100)
    not_a_problem: float = Field(ge=0, le=100)
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _sums_to_100(self) -> Distribution:
        if abs(self.very_big + self.moderately_big + self.small + self.not_a_problem - 100) > 0.5:
            raise ValueError(f"the {self.topic} distribution of {self.group} does not sum to 100")
        return self


class CrossCheck(StrictModel):
    """Another Pew wave's "very big problem" shares (republican / democrat)."""

    wave: str
    topic: str
    republican: Percent = Field(ge=0, le=100)
    democrat: Percent = Field(ge=0, le=100)
    note: str = ""


class HumanReference(StrictModel):
    survey: PewSurvey
    very_big_problem: dict[str, VeryBigShares]
    distributions: list[Distribution]
    cross_checks: list[CrossCheck]
    caveats: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_topics(self) -> HumanReference:
        topics = [*self.very_big_problem, *(d.topic for d in self.distributions), *(c.topic for c in self.cross_checks)]
        unknown = sorted(set(topics) - set(BUILTIN_TOPICS))
        if unknown:
            raise ValueError(f"unknown topics {unknown} (the built-in ones are {sorted(BUILTIN_TOPICS)})")
        return self

    def very_big_share(self, topic: str, group: Group) -> float | None:
        """The fraction (0..1) of ``group`` answering "a very big problem" on ``topic``; None
        where the figure was not found or the topic has none."""
        shares = self.very_big_problem.get(topic)
        value = getattr(shares, group) if shares is not None else None
        return None if value is None else value / 100


@lru_cache(maxsize=1)
def pew_2023() -> HumanReference:
    """The shipped reference figures, validated (a malformed data file fails loudly, once)."""
    text = files("debatelab").joinpath("data/human_reference.yaml").read_text(encoding="utf-8")
    return HumanReference.model_validate(yaml.safe_load(text))
