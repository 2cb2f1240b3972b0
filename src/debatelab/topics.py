"""Debate topics: the paper's four (worded after Pew Research Center, 2023) and user topics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator

from .errors import DebatelabError
from .readers import read_yaml
from .validation import StrictModel, describe

MAX_NAME = 200
"""Longest topic name or scale label."""
MAX_QUESTION = 2_000
"""Longest survey question or party position."""
MAX_FILE_TOPICS = 1_000
"""Most topics in one topic file (as many as a config may list)."""


class Topic(StrictModel):
    """One debate topic and the 0-10 survey that measures attitudes towards it."""

    id: str = Field(pattern=r"^[a-z0-9_]+$", max_length=64)
    """Short identifier used in exports (lowercase letters, digits, underscores), at most 64 characters."""
    name: str = Field(min_length=1, max_length=MAX_NAME)
    """Human name, e.g. "Climate change", at most 200 characters."""
    question: str = Field(min_length=1, max_length=MAX_QUESTION)
    """The survey question asked before the debate and after every round, at most 2,000 characters."""
    low_label: str = Field("not a problem at all", max_length=MAX_NAME)
    """Meaning of 0 on the scale, at most 200 characters."""
    high_label: str = Field("a very big problem", max_length=MAX_NAME)
    """Meaning of 10 on the scale, at most 200 characters."""
    positions: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=MAX_QUESTION)]] = Field(
        default_factory=dict, max_length=16)
    """Typical view of each party (``republican``/``democrat``), used in the persona meta-prompt;
    at most 16 entries of 2,000 characters."""

    @field_validator("name", "question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


def _pew(topic_id: str, name: str, rep: str, dem: str) -> Topic:
    return Topic(
        id=topic_id,
        name=name,
        question=f"How much of a problem is {name.lower()} in the country today?",
        positions={"republican": rep, "democrat": dem},
    )


# Positions follow the partisan gap Pew reported for these four problems (Doherty et al., 2023).
BUILTIN_TOPICS: dict[str, Topic] = {
    t.id: t
    for t in (
        _pew("gun_violence", "Gun violence", "a small problem", "a very big problem"),
        _pew("racism", "Racism", "a small problem", "a very big problem"),
        _pew("climate_change", "Climate change", "not a problem at all", "a very big problem"),
        _pew("illegal_immigration", "Illegal immigration", "a very big problem", "a small problem"),
    )
}


def load_topic_file(path: Path) -> list[Topic]:
    """A YAML file holding a list of topic mappings (id, name, question, optional labels)."""
    data = read_yaml(path, "topic file")
    if not isinstance(data, list):
        raise DebatelabError(f"topic file {path} must hold a list of topics")
    if len(data) > MAX_FILE_TOPICS:
        raise DebatelabError(f"topic file {path} holds {len(data):,} topics; at most {MAX_FILE_TOPICS:,}")
    topics = []
    for number, item in enumerate(data):
        try:
            topics.append(Topic.model_validate(item))
        except ValidationError as exc:
            raise DebatelabError(f"topic file {path}, topic {number + 1}: {describe(exc)}") from None
    ids = [t.id for t in topics]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DebatelabError(f"topic file {path} defines topic {dupes[0]!r} more than once")
    return topics
