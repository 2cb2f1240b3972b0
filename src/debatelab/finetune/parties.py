"""Party adapters: a ``party: both`` study tunes one adapter per party from the same questions
(the paper's Republican and Democrat datasets, §5) and seats each partisan on its own party's
adapter, the Default agent on the base model.

Folder layout of a study (``out``)::

    adapters/sft-r16-seed0/                 one-party study (party: republican | democrat)
    adapters/republican/sft-r16-seed0/      party: both, one folder per party ...
    adapters/democrat/sft-r16-seed0/        ... with the same names, so a seed's pair is found by name
    adapters/<party>/dpo-r8-seed0/          DPO (when configured): that party's answers chosen

:func:`party_adapter_seats` finds a trained pair for other tools (the mitigation lab); nothing
here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from ..errors import DebatelabError

PARTIES: tuple[str, str] = ("republican", "democrat")
OTHER = {"republican": "democrat", "democrat": "republican"}
BOTH = "both"
Kind = Literal["sft", "dpo"]
KINDS: tuple[str, ...] = ("sft", "dpo")


def study_parties(party: str) -> tuple[str, ...]:
    """The parties a study tunes adapters for: both for ``both``, else the one named."""
    return PARTIES if party == BOTH else (party,)


def adapter_dir(out: Path, party: str | None, kind: str, r: int, seed: int) -> Path:
    """Where a study keeps one adapter; ``party`` is None in a one-party study (its folders predate
    party adapters and keep their names, so old study folders resume)."""
    root = Path(out) / "adapters"
    return (root if party is None else root / party) / f"{kind}-r{r}-seed{seed}"


def party_adapter_seats(study_out: Path, rank: int, seed: int, *, method: Kind = "sft") -> dict[str, Path]:
    """Party -> the complete adapter folder of a ``party: both`` study in ``study_out`` at LoRA
    rank ``rank`` and fine-tuning seed ``seed`` (``method``: "sft", or "dpo" for the SFT+DPO ones).

    Raises :class:`DebatelabError` (one line) when either party's adapter is missing or was not
    completely trained (no ``manifest.json``)."""
    from .base import MANIFEST

    if method not in KINDS:
        raise DebatelabError(f"party adapters: method must be one of {', '.join(KINDS)}, not {method!r}")
    seats = {party: adapter_dir(study_out, party, method, rank, seed) for party in PARTIES}
    for party, folder in seats.items():
        if not (folder / MANIFEST).is_file():
            raise DebatelabError(f"{study_out} has no complete {party} {method.upper()} adapter at r={rank}, "
                                 f"seed {seed} ({folder}); run `debatelab study` with party: both into it first")
    return seats


def check_roster(agents: Sequence[Any]) -> None:
    """A ``party: both`` study seats every partisan on its party's adapter, so the experiment must
    seat both parties and must not give an agent its own model or adapter (one line otherwise)."""
    roles = {a if isinstance(a, str) else a.role for a in agents}
    missing = [p for p in PARTIES if p not in roles]
    if missing:
        raise DebatelabError(f"party: both seats each party on its own adapter, but the experiment has no "
                             f"{' or '.join(missing)} agent")
    for entry in agents:
        if not isinstance(entry, str) and (entry.model is not None or entry.adapter is not None):
            raise DebatelabError(f"party: both chooses the {entry.role} seat's adapter; the experiment must not "
                                 "give an agent its own model or adapter")


def seat_parties(agents: Sequence[Any], adapters: Mapping[str, Path]) -> list[Any]:
    """The roster with every agent of a party in ``adapters`` on that party's adapter (absolute
    paths); other agents (the Default) as they are, on the experiment's model."""
    seated: list[Any] = []
    for entry in agents:
        role = entry if isinstance(entry, str) else entry.role
        if role not in adapters:
            seated.append(entry if isinstance(entry, str) else entry.model_dump(exclude_unset=True))
            continue
        fields = {"role": role} if isinstance(entry, str) else entry.model_dump(exclude_unset=True)
        seated.append({**fields, "adapter": str(Path(adapters[role]).resolve())})
    return seated
