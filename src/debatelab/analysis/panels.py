"""Human discussion panels beside agents: a documented CSV of human groups' private attitudes over
time (docs/human-panels.md), read into the shape of a run's surveys so that the same metrics
(change first to last, the echo-chamber index in same-party groups, the attractor fit) are
computed for humans and agents side by side (:func:`compare_with_panel`); :mod:`.panel_figure`
draws both in one overlay figure.

CSV columns: ``group, participant, party, composition, time, attitude, scale`` and optionally
``topic``. ``time`` is an integer (0 = before the discussion); ``scale`` is ``LOW-HIGH`` (e.g.
``1-7``) or ``pew4`` (0..3); attitudes are mapped linearly onto 0..10,
``value = 10 · (attitude − LOW) / (HIGH − LOW)``, so the scale's midpoint lands on 5, the
midpoint the echo-chamber index measures extremity from; the raw attitude is kept in
``raw_attitude``. An empty attitude is a missing answer (``valid`` False), as an unparsable
survey is for agents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import DebatelabError
from ..scales import Scale
from .metrics import PARTISAN, change_first_to_last, echo_chamber_index
from .yardsticks import MISSING, read_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANEL_COLUMNS = ("group", "participant", "party", "composition", "time", "attitude", "scale")
SIDE_COLUMNS = ["metric", "topic", "role", "source", "estimate", "ci_low", "ci_high", "n", "reading"]
UNSPECIFIED = "unspecified"
POOLED = "all"
_RANGE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)$")
SAME_WORDS = {"same", "same-party", "same party", "homogeneous", "like-minded", "echo", "echo chamber"}
MIXED_WORDS = {"mixed", "cross-party", "cross party", "cross-cutting", "heterogeneous", "bipartisan"}


@dataclass
class PanelData:
    """A human panel as a surveys-shaped frame: ``debate_id`` = group, ``role`` = party,
    ``iteration`` = time, ``agent_index`` = the participant's number within its group,
    ``value`` = attitude on 0..10; plus ``participant``, ``raw_attitude``, ``scale``, ``composition``."""

    path: Path
    surveys: pd.DataFrame
    composition: dict[str, str] = field(default_factory=dict)
    """Each group's composition as the file wrote it ("R/R", "mixed", ...; "" when not given)."""

    def same_party_groups(self) -> set[str]:
        """Groups that are echo chambers: their composition says so ("R/R", "same") or, where it
        says nothing readable, every participant has one party."""
        parties = self.surveys.groupby("debate_id")["role"].nunique()
        out = set()
        for group, count in parties.items():
            said = composition_is_same(self.composition.get(str(group), ""))
            if said if said is not None else count == 1:
                out.add(str(group))
        return out


def composition_is_same(text: str) -> bool | None:
    """Whether a composition text describes a same-party group: True ("R/R", "D/D/D", "same"),
    False ("R/D", "mixed"), None when it does not say."""
    words = " ".join(text.lower().split())
    if words in SAME_WORDS:
        return True
    if words in MIXED_WORDS:
        return False
    parts = [p.strip() for p in re.split(r"[/+,;&-]| vs\.? ", words) if p.strip()]
    return len(set(parts)) == 1 if len(parts) >= 2 else None


def scale_bounds(scale: str) -> tuple[float, float] | None:
    """(LOW, HIGH) of a panel scale text ("1-7", "0 - 10", "pew4"), or None when malformed."""
    text = scale.strip().lower()
    if text == "pew4":
        return 0.0, 3.0
    found = _RANGE.match(text)
    if not found or float(found.group(1)) >= float(found.group(2)):
        return None
    return float(found.group(1)), float(found.group(2))


def load_panel(path: str | Path) -> PanelData:
    """Read and check a human panel CSV; every bad input is one line naming the file, the line
    and the column."""
    path = Path(path)
    what = f"human panel file {path}"
    table = read_table(path, "human panel file")
    missing = [c for c in PANEL_COLUMNS if c not in table.columns]
    if missing:
        raise DebatelabError(f"{what} lacks column {missing[0]!r} (needs {', '.join(PANEL_COLUMNS)}; topic optional)")
    rows = [{**_panel_row(row, f"{what}, line {number}"), "line": number}
            for number, row in enumerate(table.to_dict("records"), start=2)
            if any(str(v).strip() for v in row.values())]  # blank lines are skipped, numbering kept
    if not rows:
        raise DebatelabError(f"{what} holds no rows")
    frame = pd.DataFrame(rows)
    _check_consistency(frame, what)
    codes = frame.groupby("debate_id")["participant"].transform(lambda s: pd.factorize(s)[0])
    frame = frame.assign(agent_index=codes.astype(int), probs=None, score=np.nan, valid=frame["value"].notna())
    composition = {str(g): str(c) for g, c in frame.groupby("debate_id")["composition"].first().items()}
    frame = frame.drop(columns="line").sort_values(["topic", "debate_id", "iteration", "agent_index"],
                                                   ignore_index=True)
    return PanelData(path, frame, composition)


def _panel_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    values = {c: str(row.get(c, "")).strip() for c in (*PANEL_COLUMNS, "topic")}
    for column in ("group", "participant", "party", "time", "scale"):
        if not values[column]:
            raise DebatelabError(f"{where}, column {column!r}: the cell is empty")
    bounds = scale_bounds(values["scale"])
    if bounds is None:
        raise DebatelabError(f"{where}, column 'scale': {values['scale']!r} is not LOW-HIGH with LOW < HIGH "
                             "(e.g. 1-7) or pew4")
    try:
        time = float(values["time"])
    except ValueError:
        time = np.nan
    if not np.isfinite(time) or not time.is_integer() or time < 0:
        raise DebatelabError(f"{where}, column 'time': {values['time']!r} is not a whole number 0, 1, 2, ...")
    attitude = _attitude(values["attitude"], bounds, values["scale"], where)
    low, high = bounds
    scale = "pew4" if values["scale"].lower() == "pew4" else f"{low:g}-{high:g}"
    return {"debate_id": values["group"], "participant": values["participant"], "role": values["party"].lower(),
            "composition": values["composition"], "topic": values["topic"] or UNSPECIFIED, "iteration": int(time),
            "raw_attitude": attitude, "scale": scale, "value": 10 * (attitude - low) / (high - low)}


def _attitude(text: str, bounds: tuple[float, float], scale: str, where: str) -> float:
    if text.lower() in MISSING:
        return np.nan  # a missing answer, kept as an invalid survey
    try:
        attitude = float(text)
    except ValueError:
        raise DebatelabError(f"{where}, column 'attitude': {text!r} is not a number") from None
    if not bounds[0] <= attitude <= bounds[1]:  # also refuses inf
        raise DebatelabError(f"{where}, column 'attitude': {text} lies outside its scale {scale}")
    return attitude


def _check_consistency(frame: pd.DataFrame, what: str) -> None:
    """What must hold across rows: one attitude per participant and time, and one scale and party
    per participant, one composition and topic per group."""
    dupes = frame[frame.duplicated(["debate_id", "participant", "iteration"], keep=False)]
    if not dupes.empty:
        first, second = dupes.iloc[0], dupes.iloc[1]
        raise DebatelabError(f"{what}, line {second['line']}: participant {first['participant']!r} of group "
                             f"{first['debate_id']!r} has two attitudes at time {first['iteration']} "
                             f"(also line {first['line']})")
    for keys, column, what_differs in ((["debate_id", "participant"], "scale", "uses two scales"),
                                       (["debate_id", "participant"], "role", "has two parties"),
                                       (["debate_id"], "composition", "has two compositions"),
                                       (["debate_id"], "topic", "has two topics")):
        counts = frame.groupby(keys)[column].transform("nunique")
        if (counts > 1).any():
            bad = frame[counts > 1]
            first = bad.iloc[0]
            other = bad[bad[column] != first[column]].iloc[0]
            who = (f"participant {first['participant']!r} of group {first['debate_id']!r}" if len(keys) > 1
                   else f"group {first['debate_id']!r}")
            raise DebatelabError(f"{what}, line {other['line']}, column {column if column != 'role' else 'party'!r}: "
                                 f"{who} {what_differs} ({first[column]!r} on line {first['line']}, "
                                 f"{other[column]!r} here)")


def on_ten(surveys: pd.DataFrame, scale: Scale | None) -> pd.DataFrame:
    """Agents' values on 0..10, the scale human attitudes are mapped onto (a pew4 run's 0..3 ×10/3)."""
    if scale is None or scale.top == 10:
        return surveys
    return surveys.assign(value=surveys["value"] * 10 / scale.top)


def matched_topics(agent_surveys: pd.DataFrame, panel: PanelData) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """Agents and humans with comparable topics: as they are where some topic ids match, else
    both pooled under topic ``all``; and whether they were pooled."""
    if set(panel.surveys["topic"]) & set(agent_surveys["topic"].astype(str)):
        return agent_surveys, panel.surveys, False
    return agent_surveys.assign(topic=POOLED), panel.surveys.assign(topic=POOLED), True


def _endpoints(surveys: pd.DataFrame) -> pd.DataFrame:
    """Each group's own first and last time point as iterations 0 and 1: groups of different
    lengths (a panel surveyed 3 times here, 4 there) are then compared end to end, as debates are.
    A group surveyed once has no change to measure and is left out."""
    span = surveys.groupby("debate_id")["iteration"].agg(["min", "max"])
    out = surveys.join(span[span["max"] > span["min"]], on="debate_id", how="inner")
    out = out[(out["iteration"] == out["min"]) | (out["iteration"] == out["max"])]
    return out.assign(iteration=(out["iteration"] == out["max"]).astype(int)).drop(columns=["min", "max"])


def _agent_chambers(surveys: pd.DataFrame) -> set[str]:
    """Agents' echo chambers: debates whose partisan seats are all one party, at least two of
    them (a Default agent may sit in), as :func:`.metrics.metric_table` reads same-party rosters."""
    seats = surveys.drop_duplicates(["debate_id", "agent_index"])
    partisan = seats[seats["role"].isin(PARTISAN)].groupby("debate_id")["role"].agg(["nunique", "size"])
    return {str(d) for d, r in partisan.iterrows() if r["nunique"] == 1 and r["size"] >= 2}


def _first_to_last(surveys: pd.DataFrame, chambers: set[str], source: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for (topic, role), group in surveys.groupby(["topic", "role"], sort=True):
        ends = _endpoints(group)  # may be empty: then the rows say "not computed"
        rows.append(_side(change_first_to_last(ends, str(topic), str(role)), source))
        in_chambers = group["debate_id"].astype(str).isin(chambers)
        # a human "party" may be any label (a side of the topic, as in DEBATE); agents' parties are the personas'
        if (role in PARTISAN or source == "humans") and in_chambers.any():
            echo = ends[ends["debate_id"].astype(str).isin(chambers)]
            rows.append(_side(echo_chamber_index(echo, str(topic), str(role)), source))
    return rows


HUMAN_WORDS = (("the model's default attitude is unknown here, so this pull is not tied to it",
                "their own resting attitude: humans have no model default"),
               ("the other agents'", "the other participants'"), (" agents", " participants"),
               ("All agents", "All participants"), ("debate-bootstrap", "group-bootstrap"),
               (" debates", " groups"), ("A single debate", "A single group"), ("No debate has", "No group has"),
               ("each round", "per time step"))


def humanise(reading: str) -> str:
    """A metric's reading, written for agents, about human participants in groups."""
    for old, new in HUMAN_WORDS:
        reading = reading.replace(old, new)
    return reading


def _side(row: dict[str, Any], source: str) -> dict[str, Any]:
    reading = humanise(row["reading"]) if source == "humans" else row["reading"]
    return {**{c: row[c] for c in SIDE_COLUMNS if c in row}, "source": source, "reading": reading}


def _attractor_rows(agents: pd.DataFrame, humans: pd.DataFrame, pooled: bool, human_topics: int, seed: int,
                    n_boot: int) -> list[dict[str, Any]]:
    """Pull and influence for both sources. Within one topic the default attitude D only shifts
    the intercept, so humans (who have no model default) are fitted with D unknown, and their pull
    is toward their own resting attitude. Agents pooled over topics are shifted by each topic's D
    first (x − D), which makes one fit over topics exact; drift is left out, humans having none."""
    from .attractor import default_attitudes, fit_attractor

    defaults, note = default_attitudes(agents), ""
    if pooled:
        agents, defaults, note = _shift_by_default(agents, default_attitudes(agents.assign(topic=agents["_topic"])))
    rows = [{**_side(r, "agents"), "reading": _pooled_reading(r["reading"], pooled, note)}
            for r in fit_attractor(agents, defaults, seed=seed, n_boot=n_boot) if r["metric"] != "attractor_drift"]
    extra = f" Pooled over {human_topics} topics, one resting attitude is assumed for all." if human_topics > 1 else ""
    rows += [{**_side(r, "humans"), "reading": humanise(r["reading"]) + extra}
             for r in fit_attractor(humans, {}, seed=seed, n_boot=n_boot) if r["metric"] != "attractor_drift"]
    return rows


def _shift_by_default(agents: pd.DataFrame, defaults: dict[str, float]) -> tuple[pd.DataFrame, dict[str, float], str]:
    """Agents pooled under topic ``all``, each topic's values moved by its own default attitude,
    and the default to fit them with."""
    topics = sorted(agents["_topic"].unique())
    known = [t for t in topics if t in defaults]
    if len(topics) <= 1:  # one topic: nothing to align
        return agents, ({POOLED: defaults[topics[0]]} if known else {}), ""
    if not known:
        return agents, {}, (f" Pooled over {len(topics)} topics with no known default attitude, so one resting "
                            "attitude is assumed for all.")
    mine = agents[agents["_topic"].isin(known)]
    shifted = mine.assign(value=mine["value"] - mine["_topic"].map(defaults))
    left = len(topics) - len(known)
    return shifted, {POOLED: 0.0}, (f" {left} topic(s) without a known default attitude are left out." if left else "")


def _pooled_reading(reading: str, pooled: bool, note: str) -> str:
    if pooled:
        reading = reading.replace("the model's default attitude (0.00)", "the model's default attitude (each topic's own)")
    return reading + note


def compare_with_panel(agent_surveys: pd.DataFrame, panel: PanelData, *, agent_scale: Scale | None = None,
                       seed: int = 0, n_boot: int = 1000) -> pd.DataFrame:
    """The same metrics for agents and humans side by side (columns :data:`SIDE_COLUMNS`,
    ``source`` agents | humans): change first to last, the echo-chamber index (same-party groups
    and debates only), and the attractor fit's pull and influence, both sources on 0..10
    (``agent_scale``: the run's scale, so a pew4 run is rescaled too). Topics are matched by id;
    when none matches, both are pooled over topics (topic ``all``)."""
    agents, humans, pooled = matched_topics(on_ten(agent_surveys, agent_scale), panel)
    agents = agents.assign(_topic=agent_surveys["topic"].astype(str).to_numpy())  # the topic before pooling
    rows = _first_to_last(agents, _agent_chambers(agents), "agents")
    rows += _first_to_last(humans, panel.same_party_groups(), "humans")
    human_topics = int(panel.surveys["topic"].nunique()) if pooled else 1
    rows += _attractor_rows(agents, humans, pooled, human_topics, seed, n_boot)
    table = pd.DataFrame(rows).reindex(columns=SIDE_COLUMNS)
    order = {"change_first_to_last": 0, "echo_chamber_index": 1, "attractor_pull": 2, "attractor_influence": 3}
    return (table.assign(_o=table["metric"].map(order), _s=(table["source"] == "humans").astype(int))
            .sort_values(["topic", "_o", "role", "_s"], kind="stable").drop(columns=["_o", "_s"])
            .reset_index(drop=True))


def normalised_time(surveys: pd.DataFrame) -> pd.DataFrame:
    """Each debate's (or group's) iterations as 0 (first survey) .. 1 (last), so agents'
    iterations (0, n, 2n, ...) and humans' time points (0, 1, 2, ...) share one axis."""
    span = surveys.groupby("debate_id")["iteration"].agg(["min", "max"])
    out = surveys.join(span, on="debate_id")
    width = (out["max"] - out["min"]).replace(0, 1)
    return out.assign(iteration=((out["iteration"] - out["min"]) / width).round(3)).drop(columns=["min", "max"])


def overlay_figure(agent_surveys: pd.DataFrame, panel: PanelData, title: str | None = None, *,
                   agent_scale: Scale | None = None) -> Figure:
    """Mean attitude (0..10) ± 95 % interval per party against normalised time, agents solid and
    humans dashed, one panel per topic (one pooled panel when no topic id matches). Means are
    over debates / groups (seats averaged within each first), as every metric's are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .figures import ROLE_COLOURS, ROLE_LABELS
    from .stats import aggregate

    agents, humans, _ = matched_topics(on_ten(agent_surveys, agent_scale), panel)
    topics = sorted(set(agents["topic"].astype(str)) | set(humans["topic"].astype(str)))
    fig = Figure(figsize=(5.0 * len(topics), 4.0), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot: no global backend change, no figure registry
    axes = fig.subplots(1, len(topics), sharey=True, squeeze=False).ravel()
    for ax, topic in zip(axes, topics):
        for source, surveys, style in (("agents", agents, "-"), ("humans", humans, "--")):
            table = aggregate(normalised_time(surveys[surveys["topic"].astype(str) == topic]), unit="debate")
            for role, rows in table.groupby("role", sort=True):
                rows = rows.sort_values("iteration")
                mean = rows["mean"].to_numpy(float)
                err = np.nan_to_num(np.vstack([mean - rows["ci_low"], rows["ci_high"] - mean]))  # one group: no bar
                name = ROLE_LABELS.get(str(role), str(role).title())
                ax.errorbar(rows["iteration"], mean, yerr=err, linestyle=style, marker="o", markersize=4, capsize=3,
                            color=ROLE_COLOURS.get(str(role), "#7f7f7f"), label=f"{name} ({source})")
        ax.set_title(topic)
        ax.set_ylim(0, 10)
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("Time (0 = first survey, 1 = last)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(frameon=False, fontsize="small")
    axes[0].set_ylabel("Attitude (0-10; human scales mapped linearly)")
    if title:
        fig.suptitle(title)
    return fig
