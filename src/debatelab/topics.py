"""Debate topics: the paper's four (worded after Pew Research Center, 2023) and user topics."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import DebatelabError, read_yaml


class Topic(BaseModel):
    """One debate topic and the 0-10 survey that measures attitudes towards it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    """Short identifier used in exports (lowercase letters, digits, underscores)."""
    name: str = Field(min_length=1)
    """Human name, e.g. "Climate change"."""
    question: str = Field(min_length=1)
    """The survey question asked before the debate and after every round."""
    low_label: str = "not a problem at all"
    """Meaning of 0 on the scale."""
    high_label: str = "a very big problem"
    """Meaning of 10 on the scale."""
    positions: dict[str, str] = Field(default_factory=dict)
    """Typical view of each party (``republican``/``democrat``), used in the persona meta-prompt."""

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
    try:
        return [Topic.model_validate(item) for item in data]
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DebatelabError(f"topic file {path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
