"""Human yardsticks: agents' answers on Pew's 4-point item beside Pew's June 2023 figures, and an
OpinionQA-style representativeness score (Santurkar et al. 2023) against human answer
distributions, the shipped Pew ones or a user's CSV.

- ``p_very_big_before`` / ``_after``: a role's mean probability of "a very big problem" at the
  first / last survey (seats averaged within a debate, t interval over debates); ``reference``
  is the party's Pew share (Default agents: all adults).
- ``share_very_big_before`` / ``_after``: the share of greedy answers that were "a very big
  problem" (Wilson interval over answers).
- ``representativeness``: 1 − W1(model, human) / (K − 1) over the K ordinal answers, the model's
  distribution being the role's mean pre-debate distribution; 1 means identical distributions.
  Interval: percentile bootstrap over debates.

Human distributions CSV (``--humans``): columns ``topic, group, scale, option, share``; ``group``
is republican, democrat or all_adults (the group a role is compared with); ``scale`` is ``0-10``
or ``pew4``; ``option`` the score (0..10, or 0..3 with 3 = a very big problem; on pew4 also the
answer's words); ``share`` any non-negative weight (percent or fraction), normalised per
distribution, options absent counting 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import DebatelabError
from ..humans import pew_2023
from ..readers import read_text
from ..scales import PEW4, SCALES, Scale
from .metrics import COLUMNS
from .stats import summarise

GROUP_OF_ROLE = {"republican": "republican", "democrat": "democrat", "default": "all_adults"}
HUMAN_COLUMNS = ("topic", "group", "scale", "option", "share")
PEW_LABEL = "Pew all adults / party, June 2023"


def _points(surveys: pd.DataFrame) -> dict[str, int]:
    return {"before": int(surveys["iteration"].min()), "after": int(surveys["iteration"].max())}


def very_big_rows(surveys: pd.DataFrame, scale: Scale) -> list[dict[str, Any]]:
    if scale is not PEW4 or surveys.empty:
        return []
    pew, rows = pew_2023(), []
    for (topic, role), group in surveys.groupby(["topic", "role"], sort=True):
        share = pew.very_big_share(str(topic), GROUP_OF_ROLE.get(str(role), "all_adults"))
        human = share if share is not None else np.nan
        for point, iteration in _points(group).items():
            at = group[group["iteration"] == iteration]
            rows += [_probability(at, str(topic), str(role), point, human), _share(at, str(topic), str(role), point, human)]
    return rows


def _said(human: float, role: str) -> str:
    who = {"default": "all adults"}.get(role, f"{role.title()}s")
    return f" Pew (June 2023): {human:.0%} of {who}." if np.isfinite(human) else " No Pew figure for this group."


def _probability(at: pd.DataFrame, topic: str, role: str, point: str, human: float) -> dict[str, Any]:
    with_probs = at[at["probs"].map(lambda p: isinstance(p, list) and len(p) == 4)]
    per_debate = with_probs.assign(p=with_probs["probs"].map(lambda p: p[3])).groupby("debate_id")["p"].mean()
    s = summarise(per_debate.to_numpy())
    reading = (f"{'Before' if point == 'before' else 'After'} the debate, {role.title()} agents put {s['mean']:.0%} on "
               f"'a very big problem' (95% CI {s['ci_low']:.0%} to {s['ci_high']:.0%}, n={s['n']} debates)."
               + _said(human, role))
    return _row(f"p_very_big_{point}", topic, role, s["mean"], s["ci_low"], s["ci_high"], s["n"], human, reading)


def _share(at: pd.DataFrame, topic: str, role: str, point: str, human: float) -> dict[str, Any]:
    valid = at[at["valid"].astype(bool)]
    n, hits = len(valid), int((valid["score"] == PEW4.top).sum())
    ci = sps.binomtest(hits, n).proportion_ci(method="wilson") if n else None
    estimate = hits / n if n else np.nan
    reading = (f"{hits} of {n} valid greedy answers of {role.title()} agents {point} the debate were "
               f"'a very big problem' ({estimate:.0%})." + _said(human, role))
    return _row(f"share_very_big_{point}", topic, role, estimate, ci.low if ci else np.nan,
                ci.high if ci else np.nan, n, human, reading)


def representativeness(p: Sequence[float], q: Sequence[float]) -> float:
    """1 − W1(p, q)/(K − 1) over ordinal positions 0..K−1 (both normalised)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.shape != q.shape or p.ndim != 1 or len(p) < 2 or (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("representativeness needs two non-negative distributions of one length (at least 2)")
    positions = np.arange(len(p))
    return 1.0 - sps.wasserstein_distance(positions, positions, p / p.sum(), q / q.sum()) / (len(p) - 1)


def pew_distributions() -> pd.DataFrame:
    """The shipped Pew distributions (scale pew4), one row per (topic, group) with ``probs`` by score."""
    rows = [{"topic": d.topic, "group": d.group, "scale": "pew4", "source": PEW_LABEL,
             "probs": _normalised([d.not_a_problem, d.small, d.moderately_big, d.very_big])}
            for d in pew_2023().distributions]
    return pd.DataFrame(rows, columns=["topic", "group", "scale", "source", "probs"])


def _normalised(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def load_human_distributions(path: Path) -> pd.DataFrame:
    """The user's CSV (module docstring) as :func:`pew_distributions` rows; one line per problem."""
    import io

    try:
        table = pd.read_csv(io.StringIO(read_text(Path(path), "human distributions file")), dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DebatelabError(f"human distributions file {path} is not a CSV table ({' '.join(str(exc).split())})") from None
    missing = [c for c in HUMAN_COLUMNS if c not in table.columns]
    if missing:
        raise DebatelabError(f"human distributions file {path} lacks column {missing[0]!r} (needs {', '.join(HUMAN_COLUMNS)})")
    cells: dict[tuple[str, str, str], dict[int, float]] = {}
    for number, row in enumerate(table.to_dict("records"), start=2):
        key, option, share = _human_row(row, path, number)
        if option in cells.setdefault(key, {}):
            raise DebatelabError(f"human distributions file {path}, line {number}: option {option} of {key} repeats")
        cells[key][option] = share
    rows = []
    for (topic, group, scale), shares in cells.items():
        weights = [shares.get(i, 0.0) for i in range(SCALES[scale].top + 1)]
        if sum(weights) <= 0:
            raise DebatelabError(f"human distributions file {path}: the shares of {topic}/{group} sum to 0")
        rows.append({"topic": topic, "group": group, "scale": scale, "source": str(path), "probs": _normalised(weights)})
    return pd.DataFrame(rows, columns=["topic", "group", "scale", "source", "probs"])


def _human_row(row: Mapping[str, Any], path: Path, number: int) -> tuple[tuple[str, str, str], int, float]:
    where = f"human distributions file {path}, line {number}"
    values = {c: str(row.get(c) if row.get(c) is not None else "").strip() for c in HUMAN_COLUMNS}
    if any(v in ("", "nan") for v in values.values()):
        raise DebatelabError(f"{where}: every column needs a value")
    scale = SCALES.get(values["scale"])
    if scale is None:
        raise DebatelabError(f"{where}: unknown scale {values['scale']!r} (use 0-10 or pew4)")
    labels = {label.lower(): i for i, label in enumerate(scale.labels)}
    text = values["option"].lower()
    named = [labels[c] for c in (text, f"a {text}", f"a {text} problem") if c in labels]
    option = int(text) if text.isdigit() else named[0] if named else None
    if option is None or not 0 <= option <= scale.top:
        raise DebatelabError(f"{where}: option {values['option']!r} is not a score 0..{scale.top} of {scale.id}")
    try:
        share = float(values["share"])
    except ValueError:
        raise DebatelabError(f"{where}: share {values['share']!r} is not a number") from None
    if not np.isfinite(share) or share < 0:
        raise DebatelabError(f"{where}: share must be a non-negative number, not {values['share']!r}")
    return (values["topic"], values["group"].lower(), scale.id), option, share


def representativeness_rows(surveys: pd.DataFrame, scale: Scale, humans: pd.DataFrame, *, seed: int = 0,
                            n_boot: int = 1000) -> list[dict[str, Any]]:
    """Per topic and role with a human distribution on the run's scale: the representativeness
    of the role's mean pre-debate distribution."""
    first = surveys[surveys["iteration"] == surveys["iteration"].min()] if not surveys.empty else surveys
    first = first[first["probs"].map(lambda p: isinstance(p, list) and len(p) == scale.top + 1)]
    rows = []
    for (topic, role), group in first.groupby(["topic", "role"], sort=True):
        match = humans[(humans["topic"] == topic) & (humans["group"] == GROUP_OF_ROLE.get(str(role), str(role)))
                       & (humans["scale"] == scale.id)]
        if not match.empty:
            human = match.iloc[0]
            rows.append(_represent(group, str(topic), str(role), human, np.random.default_rng(seed), n_boot))
    return rows


def _represent(group: pd.DataFrame, topic: str, role: str, human: pd.Series, rng: np.random.Generator,
               n_boot: int) -> dict[str, Any]:
    per_debate = np.stack(group.groupby("debate_id")["probs"].apply(lambda ps: np.mean(np.stack(ps.to_list()), axis=0)))
    q = np.asarray(human["probs"], float)
    estimate = representativeness(per_debate.mean(axis=0), q)
    boots = [representativeness(per_debate[rng.integers(0, len(per_debate), len(per_debate))].mean(axis=0), q)
             for _ in range(n_boot if len(per_debate) > 1 else 0)]
    low, high = np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
    reading = (f"Before the debate, {role.title()} agents' answer distribution scores {estimate:.2f} against "
               f"{human['group']} in {human['source']} (1 = the same distribution, 0 = all mass at opposite ends; "
               f"95% CI {low:.2f} to {high:.2f}, n={len(per_debate)} debates).")
    return _row("representativeness", topic, role, estimate, low, high, len(per_debate), np.nan, reading)


def _row(metric: str, topic: str, role: str, estimate: float, low: float, high: float, n: int, reference: float,
         reading: str) -> dict[str, Any]:
    row = {"metric": metric, "topic": topic, "role": role, "estimate": estimate, "ci_low": float(low),
           "ci_high": float(high), "n": n, "p_value": np.nan, "p_wilcoxon": np.nan, "reference": reference,
           "reading": reading}
    return {c: row[c] for c in COLUMNS}
