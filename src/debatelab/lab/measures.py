"""The lab's comparison table: per method, metric and partisan role one estimate with a 95 %
interval and a one-sentence reading, pooled over the method's runs and topics.

Every number comes from the analysis instruments (:mod:`debatelab.analysis`); what this module
adds is the pooling and one interval scheme. A **stratum** is one run and topic; unless the
instrument brings its own interval, every interval is a percentile bootstrap that redraws whole
debates with replacement within each stratum (a debate's surveys, replies and Default agent travel
together, and each stratum keeps its size), seeded by ``seed``.

- ``convergence_to_default``: :func:`.metrics.convergence_ratio` per stratum (its D0 the stratum's
  own Default agents, debate by debate, as ``metric_table`` does), pooled weighted by debates x
  initial gap: the share of the total initial gap closed, so a stratum whose gap is tiny (an unstable
  ratio) weighs little. Runs without a Default agent add nothing. Lower: the agents kept their views.
- ``echo_chamber_index``: the instrument's per-debate extremity change in same-party debates (a
  debate with two or more seats of the role), signed towards the side the party started on in that
  stratum, averaged over every such debate. Sign as in :mod:`.metrics`: > 0 intensification, the
  human direction in echo chambers; < 0 moderation, the paper's anomaly. Higher: more human-like.
- ``attractor_pull``: a of one :func:`.attractor.fit_attractor`-style fit over every transition of
  the role in every run and topic (D per topic from the method's Default agents, redrawn in each
  resample; the instrument's own debate bootstrap); ``n`` counts transitions. Lower: less pull.
- ``survey_behaviour_consistency``: the instrument's Pearson r of stance and survey per stratum,
  pooled weighted by replies (a pooled r over topics would also reward the topics' distance from
  each other). Needs a stance judge's scores; NaN with a reading otherwise. Higher: more faithful.
- ``invalid_rate``: the share of the role's surveys that could not be read; the interval is the
  wider of the stratified debate bootstrap and the instrument's Wilson interval (which alone
  treats one agent's surveys as independent; the bootstrap alone is [0, 0] at zero failures).
- ``perplexity``: geometric mean of the role's reply perplexities under the base model
  (:func:`.quality.reply_perplexities`; robust to one degenerate reply), from ``perplexity``.
- ``repetition_rate``: mean over replies of :func:`.quality.repetition_rate`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.attractor import Anchors, fit_rows, cluster_resamples, transitions
from ..analysis.consistency import pearson_r, pair_stances
from ..analysis.frames import RunData, load
from ..analysis.metrics import PARTISAN, convergence_ratio, debate_endpoints, invalid_rate
from ..errors import DebatelabError
from .quality import repetition_rate, replies_of

METRICS: tuple[str, ...] = ("convergence_to_default", "echo_chamber_index", "attractor_pull",
                            "survey_behaviour_consistency", "invalid_rate", "perplexity", "repetition_rate")
"""The metric names, in forest-plot order."""
BETTER: dict[str, str] = {"convergence_to_default": "lower", "echo_chamber_index": "higher", "attractor_pull": "lower",
                          "survey_behaviour_consistency": "higher", "invalid_rate": "lower", "perplexity": "lower",
                          "repetition_rate": "lower"}
"""Which way each metric improves when agents keep their views (and replies stay good)."""
COLUMNS = ["method", "metric", "role", "estimate", "low", "high", "n", "reading"]
CI = "95% stratified debate-bootstrap CI"
Part = dict[str, np.ndarray]
"""One stratum's rows as arrays; ``debate`` names each row's debate (the bootstrap's cluster)."""


@dataclass(frozen=True)
class _Method:
    """A method's runs stacked: debate ids prefixed by the run's position (``run``), so they never
    collide across runs; ``midpoints``: each run's scale midpoint."""

    surveys: pd.DataFrame
    agents: pd.DataFrame
    stances: pd.DataFrame
    replies: pd.DataFrame
    midpoints: dict[int, float]
    n_runs: int


def method_metrics(runs: Mapping[str, Sequence[Path]], *, perplexity: Mapping[str, np.ndarray] | None = None,
                   seed: int = 0, n_boot: int = 1000) -> pd.DataFrame:
    """One row per method, metric (:data:`METRICS`) and partisan role of its runs (:data:`COLUMNS`).
    ``perplexity[method]``: its replies' perplexities in the order of :func:`.quality.reply_texts`
    over ``runs[method]`` (None: the perplexity rows are NaN with a reading)."""
    if not runs or any(not dirs for dirs in runs.values()):
        raise DebatelabError("method_metrics needs at least one run directory for every method")
    if not isinstance(n_boot, numbers.Integral) or isinstance(n_boot, bool) or n_boot < 1:
        raise DebatelabError(f"n_boot must be a positive integer, not {n_boot!r}")
    unknown = sorted(set(perplexity or {}) - set(runs))
    if unknown:
        raise DebatelabError(f"perplexities given for unknown method(s) {', '.join(unknown)}")
    rows: list[dict[str, Any]] = []
    for method, dirs in runs.items():
        data = _load(dirs)
        given = None if perplexity is None else perplexity.get(method)
        logs = None if given is None else np.log(_aligned(given, data.replies, method))
        for role in [r for r in PARTISAN if r in set(data.surveys["role"])]:
            found = [_convergence(data, role, seed, n_boot), _echo(data, role, seed, n_boot),
                     _pull(data, role, seed, n_boot), _consistency(data, role, seed, n_boot),
                     _invalid(data, role, seed, n_boot),
                     _perplexity(data, role, logs, perplexity is None, seed, n_boot),
                     _repetition(data, role, seed, n_boot)]
            rows += [{"method": method, "role": role, **row} for row in found]
    table = pd.DataFrame(rows, columns=COLUMNS)
    order = {m: i for i, m in enumerate(METRICS)}
    keys = [list(runs).index(m) * 100 + order[k] for m, k in zip(table["method"], table["metric"])]
    return table.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)


def _load(dirs: Sequence[Path]) -> _Method:
    frames: dict[str, list[pd.DataFrame]] = {"surveys": [], "agents": [], "stances": [], "replies": []}
    midpoints = {}
    for i, run_dir in enumerate(dirs):
        run: RunData = load(run_dir, complete_only=True)
        midpoints[i] = run.scale.midpoint
        for name, frame in (("surveys", run.surveys), ("agents", run.agents), ("stances", _one_judge(run.stances)),
                            ("replies", replies_of(run))):
            frames[name].append(frame.assign(run=i, debate_id=f"{i}:" + frame["debate_id"].astype(str)))
    stacked = {k: pd.concat(v, ignore_index=True) for k, v in frames.items()}
    for name in ("surveys", "stances", "replies"):
        stacked[name] = stacked[name].assign(topic=stacked[name]["topic"].astype(str),
                                             role=stacked[name]["role"].astype(str))
    return _Method(midpoints=midpoints, n_runs=len(dirs), **stacked)


def _one_judge(stances: pd.DataFrame) -> pd.DataFrame:
    """One judge's stances: the alphabetically first, when a run was scored by several."""
    judges = sorted(stances["judge"].dropna().unique()) if not stances.empty else []
    return stances[stances["judge"] == judges[0]] if judges else stances


def _aligned(values: np.ndarray, replies: pd.DataFrame, method: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.shape != (len(replies),):
        raise DebatelabError(f"method {method!r}: {values.size} perplexities for {len(replies)} replies "
                             "(give one per reply, in the order of reply_texts over its runs)")
    return values


def _interval(parts: Sequence[Part], stat: Callable[[Sequence[Part]], float], seed: int,
              n_boot: int) -> tuple[float, float]:
    """Percentile 95 % interval of ``stat`` over resamples of whole debates within each part."""
    if sum(len(np.unique(p["debate"])) for p in parts) < 2:
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    draws = [cluster_resamples(p["debate"], rng, n_boot) for p in parts]
    boots = [stat([{k: v[rows] for k, v in p.items()} for p, rows in zip(parts, picked)]) for picked in zip(*draws)]
    finite = [b for b in boots if np.isfinite(b)]
    return tuple(np.percentile(finite, [2.5, 97.5])) if finite else (np.nan, np.nan)  # type: ignore[return-value]


def _row(metric: str, estimate: float, interval: tuple[float, float], n: int, reading: str) -> dict[str, Any]:
    return {"metric": metric, "estimate": float(estimate), "low": float(interval[0]), "high": float(interval[1]),
            "n": int(n), "reading": reading}


def _missing(metric: str, why: str) -> dict[str, Any]:
    return _row(metric, np.nan, (np.nan, np.nan), 0, f"Not computed: {why}.")


def _where(parts: Sequence[Part], data: _Method) -> str:
    debates = sum(len(np.unique(p["debate"])) for p in parts)
    return f"{debates} debates in {len(parts)} run-topic strata of {data.n_runs} run{'s' if data.n_runs > 1 else ''}"


def _strata(frame: pd.DataFrame) -> list[tuple[tuple[int, str], pd.DataFrame]]:
    return list(frame.groupby(["run", "topic"], sort=True))


def _convergence(data: _Method, role: str, seed: int, n_boot: int) -> dict[str, Any]:
    parts = []
    for _, group in _strata(data.surveys):
        before = group[(group["role"] == "default") & (group["iteration"] == 0)]
        d0 = before.groupby("debate_id")["value"].mean().dropna()
        ends = debate_endpoints(group[group["role"] == role]).join(d0.rename("d0"), how="inner")
        if len(ends):
            parts.append({"debate": ends.index.to_numpy(),
                          **{c: ends[c].to_numpy(float) for c in ("first", "last", "d0")}})
    if not parts:
        return _missing("convergence_to_default", f"no debate has a Default agent and valid {role.title()} surveys at "
                        "both ends")
    estimate = _closed(parts)
    low, high = _interval(parts, _closed, seed, n_boot)
    reading = (f"{role.title()} agents closed {estimate:.0%} of their initial gap to the Default agent's pre-debate "
               f"attitude by the last survey ({CI} {low:.0%} to {high:.0%}; {_where(parts, data)}; 1 = full "
               "convergence, 0 = none, lower = views kept).")
    return _row("convergence_to_default", estimate, (low, high), sum(len(p["first"]) for p in parts), reading)


def _closed(parts: Sequence[Part]) -> float:
    """Per-stratum convergence ratios weighted by debates x |initial gap|: total gap closed / total gap."""
    num = den = 0.0
    for p in parts:
        d0 = float(p["d0"].mean())
        ratio, weight = convergence_ratio(p["first"], p["last"], d0), len(p["first"]) * abs(p["first"].mean() - d0)
        if np.isfinite(ratio):
            num, den = num + weight * ratio, den + weight
    return num / den if den > 0 else np.nan


def _echo(data: _Method, role: str, seed: int, n_boot: int) -> dict[str, Any]:
    seats = data.agents[data.agents["role"] == role].groupby("debate_id").size()
    same = set(seats[seats >= 2].index)
    parts = []
    for (run, _), group in _strata(data.surveys[data.surveys["debate_id"].isin(same)]):
        ends = debate_endpoints(group[group["role"] == role])
        side = np.sign(ends["first"].mean() - data.midpoints[run]) if len(ends) else 0.0
        if side != 0:
            change = side * (ends["last"] - ends["first"])  # extremity gained towards the party's side
            parts.append({"debate": ends.index.to_numpy(), "change": change.to_numpy()})
    if not parts:
        return _missing("echo_chamber_index", f"no same-party {role.title()} debate with valid surveys at both ends "
                        "(an echo chamber seats the party twice)")

    def mean(ps: Sequence[Part]) -> float:
        return float(np.concatenate([p["change"] for p in ps]).mean())

    estimate, (low, high) = mean(parts), _interval(parts, mean, seed, n_boot)
    verdict = ("no clear intensification or moderation" if low <= 0 <= high else
               "they intensified, as humans do in echo chambers" if estimate > 0 else
               "they moderated, the opposite of the human echo-chamber effect")
    reading = (f"Among same-party {role.title()} agents, extremity towards the side they started on changed by "
               f"{estimate:+.2f} ({CI} {low:+.2f} to {high:+.2f}; {_where(parts, data)}): {verdict}; > 0 is the "
               "human direction.")
    return _row("echo_chamber_index", estimate, (low, high), sum(len(p["change"]) for p in parts), reading)


def _pull(data: _Method, role: str, seed: int, n_boot: int) -> dict[str, Any]:
    # The instrument's own fit and bootstrap (D redrawn with the debates), one role pooled over
    # topics and runs: fit_attractor pools topics only over every role at once.
    moves = transitions(data.surveys)
    moves = moves.assign(topic=moves["topic"].astype(str), role=moves["role"].astype(str))
    # D from the Default agents of the role's own debates: the bootstrap redraws exactly those
    seated = data.surveys[data.surveys["debate_id"].isin(moves.loc[moves["role"] == role, "debate_id"])]
    anchors = Anchors.estimated(seated, None)
    mine = moves[moves["role"] == role].assign(d=lambda f: f["topic"].map(anchors.point).astype(float))
    topics = sorted(mine["topic"].unique())
    if len(topics) > 1:
        mine = mine[mine["d"].notna()]  # pooled over topics, a topic's D must be known
    if mine.empty:
        return _missing("attractor_pull", f"no {role.title()} transitions between surveys"
                        + (" in a topic with a Default agent" if len(topics) > 1 else ""))
    label = topics[0] if len(topics) == 1 else "all"
    row = fit_rows(mine, label, role, anchors, seed, n_boot, 0.95)[0]
    reading = (f"{row['reading']} Pooled over {mine['topic'].nunique()} topic(s) and {data.n_runs} run(s); "
               "lower = less pull.")
    return _row("attractor_pull", row["estimate"], (row["ci_low"], row["ci_high"]), row["n"], reading)


def _consistency(data: _Method, role: str, seed: int, n_boot: int) -> dict[str, Any]:
    if data.stances.empty:
        return _missing("survey_behaviour_consistency", "no stance scores in these runs (score them with "
                        "`debatelab score-stance`, or keep the lab's judge: true)")
    parts = []
    for (run, topic), group in _strata(data.surveys):
        said = data.stances[(data.stances["run"] == run) & (data.stances["topic"] == topic)]
        pairs = pair_stances(said, group)
        pairs = pairs[pairs["role"] == role]
        if len(pairs):
            parts.append({"debate": pairs["debate_id"].to_numpy(),
                          **{c: pairs[c].to_numpy(float) for c in ("stance", "survey")}})
    estimate = _weighted_r(parts)
    if not np.isfinite(estimate):
        return _missing("survey_behaviour_consistency", f"no run-topic stratum has enough varying {role.title()} "
                        "stance-survey pairs for a correlation")
    low, high = _interval(parts, _weighted_r, seed, n_boot)
    judge = data.stances["judge"].dropna().iloc[0]
    reading = (f"What {role.title()} agents said (judge {judge}) correlated with what they reported at r = "
               f"{estimate:.2f} ({CI} {low:.2f} to {high:.2f}; within each run and topic, weighted by replies; "
               f"{_where(parts, data)}; higher = more faithful).")
    return _row("survey_behaviour_consistency", estimate, (low, high), sum(len(p["stance"]) for p in parts), reading)


def _weighted_r(parts: Sequence[Part]) -> float:
    found = [(pearson_r(p["stance"], p["survey"]), len(p["stance"])) for p in parts]
    found = [(r, w) for r, w in found if np.isfinite(r)]
    return float(np.average([r for r, _ in found], weights=[w for _, w in found])) if found else np.nan


def _invalid(data: _Method, role: str, seed: int, n_boot: int) -> dict[str, Any]:
    mine = data.surveys[data.surveys["role"] == role]
    parts = [{"debate": g["debate_id"].to_numpy(), "bad": g["value"].isna().to_numpy(float)} for _, g in _strata(mine)]

    def share(ps: Sequence[Part]) -> float:
        bad = np.concatenate([p["bad"] for p in ps])
        return float(bad.mean()) if len(bad) else np.nan

    wilson = invalid_rate(mine, "all", role)
    low, high = _interval(parts, share, seed, n_boot)
    low, high = np.nanmin([low, wilson["ci_low"]]), np.nanmax([high, wilson["ci_high"]])
    reading = (f"{int(mine['value'].isna().sum())} of {len(mine)} {role.title()} surveys could not be read "
               f"({wilson['estimate']:.1%}; 95% CI {low:.1%} to {high:.1%}, the wider of the debate bootstrap and "
               "Wilson's).")
    return _row("invalid_rate", wilson["estimate"], (low, high), len(mine), reading)


def _per_reply(data: _Method, role: str, values: np.ndarray, metric: str, seed: int, n_boot: int,
               centre: Callable[[np.ndarray], float], what: str) -> dict[str, Any]:
    """A per-reply quality value averaged by ``centre``, replies clustered by debate in strata."""
    replies = data.replies.assign(value=values)
    mine = replies[(replies["role"] == role) & np.isfinite(replies["value"])]
    if mine.empty:
        return _missing(metric, f"no {role.title()} reply has a {what}")
    parts = [{"debate": g["debate_id"].to_numpy(), "value": g["value"].to_numpy(float)} for _, g in _strata(mine)]

    def stat(ps: Sequence[Part]) -> float:
        return centre(np.concatenate([p["value"] for p in ps]))

    estimate, interval = stat(parts), _interval(parts, stat, seed, n_boot)
    reading = (f"{role.title()} replies: {what} {estimate:.3g} ({CI} {interval[0]:.3g} to {interval[1]:.3g}; "
               f"{len(mine)} replies, {_where(parts, data)}; lower is better).")
    return _row(metric, estimate, interval, len(mine), reading)


def _perplexity(data: _Method, role: str, logs: np.ndarray | None, none_given: bool, seed: int,
                n_boot: int) -> dict[str, Any]:
    if logs is None:
        return _missing("perplexity", "no reply perplexities were given (they need the base model's weights: a "
                        "transformers backend such as embedded or hf:)" if none_given else
                        "no reply perplexities were given for this method")
    return _per_reply(data, role, logs, "perplexity", seed, n_boot, lambda v: float(np.exp(v.mean())),
                      "geometric-mean perplexity under the base model")


def _repetition(data: _Method, role: str, seed: int, n_boot: int) -> dict[str, Any]:
    rates = repetition_rate(data.replies["text"].tolist())
    return _per_reply(data, role, rates, "repetition_rate", seed, n_boot, lambda v: float(v.mean()),
                      "mean share of repeated word 3-grams")


def delta_vs(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each other method's estimate minus the baseline's, per metric and role: columns method,
    metric, role, delta, low, high, baseline, better. The interval treats the two estimates as
    independent normals (half-widths added in quadrature): conservative, since the methods share
    personas, seeds and topics and so err together."""
    missing = [c for c in ("method", "metric", "role", "estimate", "low", "high") if c not in table.columns]
    if missing:
        raise DebatelabError(f"delta_vs: the table lacks column(s) {', '.join(missing)}")
    if baseline not in set(table["method"]):
        raise DebatelabError(f"delta_vs: no method named {baseline!r} in the table")
    keys = ["metric", "role"]
    base = table.loc[table["method"] == baseline, [*keys, "estimate", "low", "high"]]
    others = table[table["method"] != baseline].merge(base, on=keys, how="left", suffixes=("", "_b"))
    half = np.hypot((others["high"] - others["low"]) / 2, (others["high_b"] - others["low_b"]) / 2)
    delta = others["estimate"] - others["estimate_b"]
    out = pd.DataFrame({"method": others["method"], "metric": others["metric"], "role": others["role"],
                        "delta": delta, "low": delta - half, "high": delta + half, "baseline": others["estimate_b"],
                        "better": others["metric"].map(BETTER)})
    return out.reset_index(drop=True)
