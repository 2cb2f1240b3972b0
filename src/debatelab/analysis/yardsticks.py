"""Human yardsticks: agents' answers on Pew's 4-point item beside Pew's June 2023 figures, and an
OpinionQA-style representativeness score (Santurkar et al. 2023) against human answer
distributions, the shipped Pew ones or a user's CSV.

- ``p_very_big_before`` / ``_after``: a role's mean probability of "a very big problem" at the
  first / last survey (seats averaged within a debate, t interval over debates); ``reference``
  is the party's Pew share (Default agents: all adults). Only on runs surveyed on Pew's scale:
  a 0-10 rating has no "very big problem" to compare.
- ``share_very_big_before`` / ``_after``: the share of valid greedy answers that were "a very big
  problem" (Wilson interval; n counts answers, since a greedy answer is one agent's).
- ``representativeness``: 1 − W1(model, human) / (K − 1) over the K ordinal answers, the model's
  distribution being the role's mean pre-debate distribution (``representativeness_after``: at the
  last survey); 1 means identical distributions, 0 all mass at opposite ends of the scale.
  Interval: percentile bootstrap over debates.

Human distributions CSV (``--humans``): columns ``topic, group, scale, option, share``; ``group``
is the group a role is compared with (republican, democrat, all_adults, or any label); ``scale``
is ``0-10`` or ``pew4``; ``option`` the score (0..10, or 0..3 with 3 = a very big problem; on pew4
also the answer's words, e.g. "A very big problem"); ``share`` any non-negative weight (percent or
fraction), normalised per (topic, group, scale), options absent counting 0.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import DebatelabError
from ..humans import pew_2023
from ..readers import read_text
from ..scales import PEW4, SCALES, Scale
from .metrics import COLUMNS, SMALL_N
from .stats import summarise

GROUP_OF_ROLE: dict[str, str] = {"republican": "republican", "democrat": "democrat", "default": "all_adults"}
"""Which human group a role is read against: a party's agents against that party, the model's own
(Default) voice against all adults."""
HUMAN_COLUMNS = ("topic", "group", "scale", "option", "share")
DISTRIBUTION_COLUMNS = ["topic", "group", "scale", "source", "probs"]
PEW_WHO = {"all_adults": "all adults", "republican": "Republicans", "democrat": "Democrats"}
MISSING = {"", "nan", "na", "n/a", "none", "null"}
Point = str | int
"""A survey point: ``"first"`` (iteration 0, before the debate), ``"last"``, or an iteration."""


def _iteration(surveys: pd.DataFrame, point: Point) -> int:
    if point == "first":
        return int(surveys["iteration"].min())
    if point == "last":
        return int(surveys["iteration"].max())
    if isinstance(point, (int, np.integer)) and not isinstance(point, bool):
        return int(point)
    raise ValueError(f"a survey point is 'first', 'last' or an iteration number, not {point!r}")


def _suffix(point: Point) -> str:
    return {"first": "before", "last": "after"}.get(str(point), f"at_{point}")


def _when(point: Point) -> str:
    return {"first": "Before the debate", "last": "After the debate"}.get(str(point), f"At survey iteration {point}")


def very_big_rows(surveys: pd.DataFrame, scale: Scale,
                  iterations: Sequence[Point] = ("first", "last")) -> list[dict[str, Any]]:
    """Per topic, role and survey point: ``p_very_big_<point>`` and ``share_very_big_<point>``,
    each with the party's Pew share as ``reference``. [] unless the run was surveyed on pew4."""
    if scale.id != PEW4.id or surveys.empty:
        return []
    pew, rows = pew_2023(), []
    for (topic, role), group in surveys.groupby(["topic", "role"], sort=True):
        who = GROUP_OF_ROLE.get(str(role))
        share = pew.very_big_share(str(topic), who) if who is not None else None  # type: ignore[arg-type]
        human = share if share is not None else np.nan
        for point in iterations:
            at = group[group["iteration"] == _iteration(group, point)]
            rows += [_probability(at, str(topic), str(role), point, human, who),
                     _share(at, str(topic), str(role), point, human, who)]
    return rows


def _said(human: float, who: str | None) -> str:
    if not np.isfinite(human):
        return " No Pew figure for this group and topic."
    return f" Pew (June 2023): {human:.0%} of {PEW_WHO.get(who or '', who)}."


def _probability(at: pd.DataFrame, topic: str, role: str, point: Point, human: float,
                 who: str | None) -> dict[str, Any]:
    with_probs = at[at["probs"].map(lambda p: isinstance(p, (list, tuple)) and len(p) == len(PEW4.labels))]
    per_debate = (with_probs.assign(p=with_probs["probs"].map(lambda p: float(p[PEW4.top])))
                  .groupby("debate_id")["p"].mean())  # same-role seats talked together: one debate, one value
    s = summarise(per_debate.to_numpy())
    metric = f"p_very_big_{_suffix(point)}"
    if s["n"] == 0:
        reading = (f"{_when(point)}, no {role.title()} survey recorded a distribution over Pew's answers "
                   "(the survey method gave greedy answers only); not computed." + _said(human, who))
        return _row(metric, topic, role, np.nan, np.nan, np.nan, 0, human, reading)
    caveat = f" With only {s['n']} debates, treat the interval as rough." if s["n"] < SMALL_N else ""
    reading = (f"{_when(point)}, {role.title()} agents put {s['mean']:.0%} on 'a very big problem' "
               f"(95% CI {s['ci_low']:.0%} to {s['ci_high']:.0%}, n={s['n']} debates)." + _said(human, who) + caveat)
    return _row(metric, topic, role, s["mean"], s["ci_low"], s["ci_high"], s["n"], human, reading)


def _share(at: pd.DataFrame, topic: str, role: str, point: Point, human: float, who: str | None) -> dict[str, Any]:
    valid = at[at["valid"].astype(bool) & at["score"].notna()]
    n, hits = len(valid), int((valid["score"] == PEW4.top).sum())
    metric = f"share_very_big_{_suffix(point)}"
    if n == 0:
        reading = f"{_when(point)}, no {role.title()} agent gave a valid greedy answer; not computed." + _said(human, who)
        return _row(metric, topic, role, np.nan, np.nan, np.nan, 0, human, reading)
    ci = sps.binomtest(hits, n).proportion_ci(method="wilson")
    caveat = f" With only {n} answers, treat the interval as rough." if n < SMALL_N else ""
    reading = (f"{_when(point)}, {hits} of {n} valid greedy answers of {role.title()} agents were 'a very big "
               f"problem' ({hits / n:.0%}, 95% Wilson CI {ci.low:.0%} to {ci.high:.0%}; n counts answers)."
               + _said(human, who) + caveat)
    return _row(metric, topic, role, hits / n, ci.low, ci.high, n, human, reading)


def representativeness(p: Sequence[float], q: Sequence[float]) -> float:
    """1 − W1(p, q)/(K − 1) over ordinal positions 0..K−1 (both normalised first): 1 when the
    distributions are identical, 0 when all of one's mass sits at the other end from the other's."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.ndim != 1 or p.shape != q.shape or len(p) < 2:
        raise ValueError(f"representativeness needs two distributions of one length (at least 2), "
                         f"not {p.shape} and {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()) or (p < 0).any() or (q < 0).any():
        raise ValueError("representativeness needs finite, non-negative weights")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("representativeness needs distributions with a positive sum")
    positions = np.arange(len(p))
    return float(1.0 - sps.wasserstein_distance(positions, positions, p / p.sum(), q / q.sum()) / (len(p) - 1))


def pew_distributions() -> pd.DataFrame:
    """The shipped Pew distributions (scale pew4), one row per (topic, group) with ``probs`` by score."""
    rows = [{"topic": d.topic, "group": d.group, "scale": PEW4.id,
             "source": f"Pew {PEW_WHO.get(d.group, d.group)}, June 2023",
             "probs": _normalised([d.not_a_problem, d.small, d.moderately_big, d.very_big])}
            for d in pew_2023().distributions]
    return pd.DataFrame(rows, columns=DISTRIBUTION_COLUMNS)


def _normalised(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def load_human_distributions(path: str | Path) -> pd.DataFrame:
    """The user's CSV (module docstring) as :func:`pew_distributions` rows; every problem is one
    line naming the file, the line and the column."""
    path = Path(path)
    table = read_table(path, "human distributions file")
    missing = [c for c in HUMAN_COLUMNS if c not in table.columns]
    if missing:
        raise DebatelabError(f"human distributions file {path} lacks column {missing[0]!r} "
                             f"(needs {', '.join(HUMAN_COLUMNS)})")
    cells: dict[tuple[str, str, str], dict[int, tuple[float, int]]] = {}
    for number, row in enumerate(table[list(HUMAN_COLUMNS)].to_dict("records"), start=2):
        if all(not str(v).strip() for v in row.values()):
            continue  # a blank line
        key, option, share = _human_row(row, f"human distributions file {path}, line {number}")
        if option in cells.setdefault(key, {}):
            raise DebatelabError(f"human distributions file {path}, line {number}, column 'option': option "
                                 f"{option} of {'/'.join(key)} repeats (first on line {cells[key][option][1]})")
        cells[key][option] = (share, number)
    if not cells:
        raise DebatelabError(f"human distributions file {path} holds no distribution")
    rows = []
    for (topic, group, scale), shares in cells.items():
        weights = [shares.get(i, (0.0, 0))[0] for i in range(SCALES[scale].top + 1)]
        if sum(weights) <= 0:
            raise DebatelabError(f"human distributions file {path}, column 'share': the shares of "
                                 f"{topic}/{group}/{scale} sum to 0")
        rows.append({"topic": topic, "group": group, "scale": scale, "source": f"group '{group}' of {path.name}",
                     "probs": _normalised(weights)})
    return pd.DataFrame(rows, columns=DISTRIBUTION_COLUMNS)


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A user's CSV as text cells (nothing turned into NaN, blank lines kept so that row i is
    line i + 2), column names stripped and lowercased; any malformed table is one line."""
    text = read_text(path, what).lstrip("\ufeff")  # size-limited; a spreadsheet's BOM would rename column 1
    try:
        with warnings.catch_warnings():
            # a row longer than the header is data pandas would silently drop (or shift into an index)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False,
                                index_col=False)
    except pd.errors.ParserWarning:
        raise DebatelabError(f"{what} {path} is not a CSV table (a row has more fields than the header)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DebatelabError(f"{what} {path} is not a CSV table ({' '.join(str(exc).split())})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    return table


def _human_row(row: Mapping[str, Any], where: str) -> tuple[tuple[str, str, str], int, float]:
    values = {c: str(row.get(c) if row.get(c) is not None else "").strip() for c in HUMAN_COLUMNS}
    for column, value in values.items():
        if value.lower() in MISSING:
            raise DebatelabError(f"{where}, column {column!r}: every column needs a value")
    scale = SCALES.get(values["scale"].lower())
    if scale is None:
        raise DebatelabError(f"{where}, column 'scale': unknown scale {values['scale']!r} (use 0-10 or pew4)")
    option = _option(values["option"], scale)
    if option is None:
        words = " or its words" if scale.id == PEW4.id else ""
        raise DebatelabError(f"{where}, column 'option': {values['option']!r} is not a score 0..{scale.top} "
                             f"of {scale.id}{words}")
    try:
        share = float(values["share"])
    except ValueError:
        raise DebatelabError(f"{where}, column 'share': {values['share']!r} is not a number") from None
    if not np.isfinite(share) or share < 0:
        raise DebatelabError(f"{where}, column 'share': a share must be a non-negative number, not {values['share']!r}")
    group = re.sub(r"[\s-]+", "_", values["group"].lower())
    return (values["topic"], group, scale.id), option, share


def _option(text: str, scale: Scale) -> int | None:
    """A score from its number ("3", "3.0") or, on pew4, its words ("A very big problem", "very big")."""
    try:
        number = float(text)
    except ValueError:
        words = " ".join(text.lower().rstrip(".").split())
        labels = {label: i for i, label in enumerate(scale.labels)} if scale.id == PEW4.id else {}
        found = [labels[c] for c in (words, f"a {words}", f"a {words} problem", f"{words} at all") if c in labels]
        return found[0] if found else None
    if not number.is_integer() or not 0 <= number <= scale.top:
        return None
    return int(number)


def representativeness_rows(surveys: pd.DataFrame, scale: Scale, humans: pd.DataFrame,
                            group_of_role: Mapping[str, str] | None = None, iteration: Point = "first", *,
                            seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
    """Per topic and role that has a human distribution for its group on the run's scale: the
    representativeness of the role's mean answer distribution at ``iteration`` (``first`` =
    before the debate). ``group_of_role`` maps roles to ``humans``' groups (default
    :data:`GROUP_OF_ROLE`; a role it does not name is looked up under its own name)."""
    mapping = dict(GROUP_OF_ROLE if group_of_role is None else group_of_role)
    metric = "representativeness" if iteration == "first" else f"representativeness_{_suffix(iteration)}"
    rows = []
    for (topic, role), group in surveys.groupby(["topic", "role"], sort=True):
        at = group[group["iteration"] == _iteration(group, iteration)]
        at = at[at["probs"].map(lambda p: isinstance(p, (list, tuple)) and len(p) == scale.top + 1)]
        wanted = mapping.get(str(role), str(role))
        match = humans[(humans["topic"] == topic) & (humans["group"] == wanted) & (humans["scale"] == scale.id)]
        if match.empty or at.empty:
            continue
        rng = np.random.default_rng(seed)
        rows.append(_represent(at, str(topic), str(role), match.iloc[0], metric, _when(iteration), rng, n_boot))
    return rows


def _represent(at: pd.DataFrame, topic: str, role: str, human: pd.Series, metric: str, when: str,
               rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    # seats of one role in one debate talked to each other: average them before treating debates as units
    per_debate = np.stack(at.groupby("debate_id")["probs"].apply(lambda ps: np.mean(np.stack(ps.to_list()), axis=0)))
    q = np.asarray(human["probs"], float)
    estimate = representativeness(per_debate.mean(axis=0), q)
    n = len(per_debate)
    boots = [representativeness(per_debate[rng.integers(0, n, n)].mean(axis=0), q) for _ in range(n_boot if n > 1 else 0)]
    low, high = np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
    caveat = f" With only {n} debates, treat the interval as rough." if n < SMALL_N else ""
    reading = (f"{when}, {role.title()} agents' mean answer distribution scores {estimate:.2f} against "
               f"{human['source']} (1 − normalised Wasserstein distance: 1 = the same distribution, 0 = all mass at "
               f"opposite ends; 95% debate-bootstrap CI {low:.2f} to {high:.2f}, n={n} debates).{caveat}")
    return _row(metric, topic, role, estimate, low, high, n, np.nan, reading)


def _row(metric: str, topic: str, role: str, estimate: float, low: float, high: float, n: int, reference: float,
         reading: str) -> dict[str, Any]:
    row = {"metric": metric, "topic": topic, "role": role, "estimate": float(estimate), "ci_low": float(low),
           "ci_high": float(high), "n": int(n), "p_value": np.nan, "p_wilcoxon": np.nan,
           "reference": float(reference), "reading": reading}
    return {c: row[c] for c in COLUMNS}
