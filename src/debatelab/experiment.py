"""Run an experiment into a run directory: personas -> debate plan -> waves -> exports. Resumable."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import request_counts, stopping
from .config import ExperimentConfig
from .errors import DebatelabError, RunInterrupted, first_line
from .executor import Executor, open_executor
from .export import export_run
from .llm.base import LLM, Conditioning, Purpose
from .llm.registry import split_model
from .personas import load_bank, save_bank
from .planning import check_feasible, generate_bank, plan_debates
from .prompts import TEMPLATE_VERSION, reply_prompt, survey_prompt
from .society.config import SocietyConfig
from .society.engine import fingerprint_extra
from .society.run import run_society
from .store import RunLock, RunStore, check_claimable, disk_full_error, is_disk_full, lock_run_dir, open_store
from .types import DebateSpec, Persona


@dataclass
class RunSummary:
    run_dir: Path
    debates: int
    complete: int
    seconds: float
    failed: int = 0
    """Debates whose backend request failed for good in this run (see debates.csv; resumable)."""
    invalid_surveys: int = 0
    surveys: int = 0
    distributions: int = 0
    """Surveys that recorded a 0..10 distribution."""
    fallbacks: int = 0
    """Of those, distributions the backend could only parse from generated text (no logprobs)."""
    partial: int = 0
    """Of those, distributions with only the API's top-k options scored (the rest counted as 0)."""
    option_mass: float | None = None
    """Mean option mass: the probability the model put on answering exactly one of 0..10 (see
    :func:`debatelab.analysis.show.MASS_MEANING`); None where no backend reported one."""
    society: dict[str, Any] | None = None
    """A society run's agents, steps done, encounters and why it stopped early (None: a debate run)."""
    conditioning: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What each model conditions on (:func:`describe_conditioning`; stored as the run's
    ``conditioning`` meta); :func:`conditioning_lines` says it for the run summary."""
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model with network requests, the run's retries, 429s, requests failed for good and
    surveys by scoring method, over all its sessions (:mod:`debatelab.request_counts`; meta
    ``requests``)."""


def run_experiment(config: ExperimentConfig, run_dir: Path, llm: LLM | None = None,
                   progress: bool = False, seat_llms: Mapping[str, LLM] | None = None,
                   lock: RunLock | None = None) -> RunSummary:
    """Run or resume ``config`` into ``run_dir``. SIGINT/SIGTERM stop it between commits and
    raise :class:`RunInterrupted`; everything committed stays, and running again resumes. A full
    disk raises :class:`RunFailed` (one line, exit 1); the database keeps every committed wave.

    ``llm`` and ``seat_llms`` (per-agent model key -> backend, see ``config.seat_models()``) are
    loaded from the config when not given, after the run directory is locked. A caller that loads
    a model itself should lock first too: ``lock_run_dir(run_dir)``, passed as ``lock`` (and
    released by that caller)."""
    with stopping.handle_signals():
        try:
            return _run(config, run_dir, llm, progress, seat_llms, lock)
        except stopping.StopRequested as stop:
            raise RunInterrupted(stop.signum, run_dir) from None
        except Exception as exc:
            full = disk_full_error(exc, run_dir)  # wherever it struck: the same line, the same fix
            if full is None:
                raise
            raise full from None


def _run(config: ExperimentConfig, run_dir: Path, llm: LLM | None, progress: bool,
         seat_llms: Mapping[str, LLM] | None, held: RunLock | None) -> RunSummary:
    # Everything that can be checked is checked before the run directory is touched, so a
    # fixable input error never leaves a directory claimed by the config about to be corrected.
    split_model(config.model)
    bank = load_bank(config.personas) if config.personas else None
    check_feasible(config, bank)
    if not _writable(run_dir):
        raise DebatelabError(f"run directory {run_dir} is not writable")
    start = time.monotonic()
    # The lock comes before the model: a second writer is refused at once, not after a load that
    # may take minutes (and GPU memory the first writer needs).
    if held is not None and held.run_dir.resolve() != run_dir.resolve():
        raise ValueError(f"the lock given is for {held.run_dir}, not {run_dir}")
    lock = held or lock_run_dir(run_dir)
    undo = False
    try:
        fingerprint = run_fingerprint(config, bank)
        check_claimable(run_dir, fingerprint)  # read-only, before the model loads
        return _run_locked(config, run_dir, llm, bank, progress, seat_llms, start, lock, fingerprint)
    except BaseException as exc:
        undo = isinstance(exc, DebatelabError) and exc.bad_input and not is_disk_full(exc)
        raise
    finally:
        if held is None:
            lock.release(undo=undo)  # bad input leaves no lock file or run directory that it created


def _run_locked(config: ExperimentConfig, run_dir: Path, llm: LLM | None, bank: list[Persona] | None,
                progress: bool, seat_llms: Mapping[str, LLM] | None, start: float, lock: RunLock,
                fingerprint: str) -> RunSummary:
    engine = config.model_copy(update={"max_in_flight": config.phase_in_flight(), "admission": "together"}) \
        if isinstance(config, SocietyConfig) else config  # a society's phase goes in flight at once
    with open_executor(engine, llm, seat_llms) as executor:  # the models load here, under the lock
        store = open_store(run_dir, lock, checked=True)  # check_claimable verified it under this lock
        try:
            store.claim(fingerprint, _provenance(config))
            _check_identity(store, executor.llm, executor.seats)
            backends = {"": executor.llm, **executor.seats}
            before = request_counts.snapshot(backends, config.model)
            try:
                summary = _debate(config, executor, store, run_dir, bank, progress)
            except stopping.StopRequested as stop:
                _record_requests(store, backends, config.model, before)
                _record_state(store, "interrupted", stop.name)
                raise
            except Exception as exc:
                error = disk_full_error(exc, run_dir) or exc  # run_experiment raises it as this too
                if not (isinstance(error, DebatelabError) and error.bad_input):  # bad input leaves the run as it was
                    _record_requests(store, backends, config.model, before)
                    _record_state(store, "failed", _failure_detail(error))
                raise
            summary.requests = _record_requests(store, backends, config.model, before)
            summary.seconds = time.monotonic() - start
            return summary
        finally:
            store.close()


def _failure_detail(exc: BaseException) -> str:
    """The one line recorded as why a run failed: our errors are written to be read alone; any
    other keeps its type's name in front (a bare ``KeyError: 'x'`` says nothing without it)."""
    if isinstance(exc, DebatelabError) or not str(exc).strip():
        return first_line(exc)  # the type's name alone when there is no message
    return f"{type(exc).__name__}: {first_line(exc)}"


def _debate(config: ExperimentConfig, executor: Executor, store: RunStore, run_dir: Path,
            bank: list[Persona] | None, progress: bool) -> RunSummary:
    llm = executor.llm
    if bank is None:
        bank = _run_personas(config, llm, store, run_dir)
    if isinstance(config, SocietyConfig):
        return _society(config, executor, store, run_dir, bank, progress)
    specs = plan_debates(config, bank, llm.identity(), {k: s.identity() for k, s in executor.seats.items()})
    _check_no_strays(store, specs)
    store.register(specs)
    conditioning = describe_conditioning(config, specs, {"": llm, **executor.seats})
    store.set_meta("conditioning", conditioning)
    failed = 0
    with _Progress(len(specs), store, [llm, *executor.seats.values()], enabled=progress) as bar:
        for wave in executor.run(specs, store):
            failed += len(wave.failed)
            bar.update(len(wave.finished), len(wave.turns))
    export_run(store, run_dir)
    complete = store.counts().get("complete", 0)
    store.set_state("complete" if complete == len(specs) else "incomplete",
                    f"{len(specs) - complete} debate(s) failed; run again to retry" if complete < len(specs) else "")
    surveys, invalid = store.survey_counts()
    return RunSummary(run_dir, len(specs), complete, 0.0, failed, invalid, surveys, *store.distribution_counts(),
                      conditioning=conditioning)


def _society(config: SocietyConfig, executor: Executor, store: RunStore, run_dir: Path,
             bank: list[Persona], progress: bool) -> RunSummary:
    society, info = run_society(config, executor, store, run_dir, bank, progress)
    conditioning = describe_conditioning(config, society.first_specs, {"": executor.llm, **executor.seats})
    store.set_meta("conditioning", conditioning)
    surveys, invalid = store.survey_counts()
    return RunSummary(run_dir, info["units"], info["complete"], 0.0, info["failed"], invalid, surveys,
                      *store.distribution_counts(), society=info, conditioning=conditioning)


def describe_conditioning(config: ExperimentConfig, specs: Sequence[DebateSpec],
                          llms: Mapping[str, LLM]) -> dict[str, dict[str, Any]]:
    """Per model key ("" = the experiment's model): its model string, how it conditions on a
    reply and on a survey (each backend's ``how``), and whether that text is exactly what the
    model reads. Measured on the first planned debate's opening prompts: how a backend renders a
    prompt does not depend on its content."""
    if not specs:
        return {}
    out = {}
    for key in sorted(llms):  # "" first
        spec, seat = _sample_seat(specs, key)
        reply = [llms[key].conditioning(reply_prompt(spec.agents, seat, spec.topic, []), "generate")]
        prompt = survey_prompt(spec.agents, seat, spec.topic, [], config.survey.scale_spec)
        survey = [llms[key].conditioning(prompt, purpose) for purpose in _survey_purposes(config)]
        out[key] = {"model": key or config.model, "reply": reply[0].how, "survey": _survey_how(survey),
                    "exact": all(c.exact for c in reply + survey)}
    return out


def _sample_seat(specs: Sequence[DebateSpec], key: str) -> tuple[DebateSpec, int]:
    """The first debate and seat served by model ``key`` (seat 0 of the first debate if none is)."""
    for spec in specs:
        for index, agent in enumerate(spec.agents):
            if agent.model == key:
                return spec, index
    return specs[0], 0


def _survey_purposes(config: ExperimentConfig) -> list[Purpose]:
    """The requests a survey sends, in the order their texts are hashed (runner._survey_sha)."""
    survey = config.survey
    return [p for p, asked in (("generate", survey.records_greedy), ("score", survey.records_distribution)) if asked]


def _survey_how(conditionings: Sequence[Conditioning]) -> str:
    """One line for a survey's one or two requests. Backends describe scoring as generation plus
    how each option is scored, so a scoring line that extends the greedy one says both."""
    if len(conditionings) == 1 or conditionings[1].how.startswith(conditionings[0].how):
        return conditionings[-1].how
    return f"greedy answer: {conditionings[0].how}; distribution: {conditionings[1].how}"


def conditioning_lines(conditioning: Mapping[str, Any]) -> list[str]:
    """The run summary's (and the report's) statement of what each model conditioned on: one
    line per model, and a WARNING line for each whose text is not exactly what the model read."""
    lines = []
    for entry in conditioning.values():
        model = entry.get("model", "?")
        lines.append(f"conditioning ({model}): replies: {entry.get('reply', '?')}; surveys: {entry.get('survey', '?')}")
        if entry.get("exact") is False:
            lines.append(_inexact_warning(model, f"{entry.get('reply', '')} {entry.get('survey', '')}"))
    return lines


def _inexact_warning(model: str, how: str) -> str:
    warning = (f"WARNING: {model}: the server renders the chat template, so prompt hashes identify requests, "
               "not tokens, and results may not match another backend of the same model")
    if "instruction" in how:  # the backends' wording when the prefix goes in as a request to start with it
        warning += "; the assistant prefix could not be prefilled (it was asked for as an instruction)"
    return warning


def _record_requests(store: RunStore, backends: Mapping[str, LLM], model: str,
                     before: request_counts.Counts) -> request_counts.Counts:
    """This session's request counts added to the run's meta ``requests``; the run's totals.
    Best effort like :func:`_record_state` when the run is on its way out."""
    session = request_counts.since(request_counts.snapshot(backends, model), before)
    totals = request_counts.add_session(store.get_meta(request_counts.META_KEY), session)
    if any(counts["calls"] for counts in session.values()):
        with suppress(stopping.StopRequested):
            with stopping.critical():
                store.try_set_meta(request_counts.META_KEY, totals)
    return totals


def _record_state(store: RunStore, state: str, detail: str) -> None:
    # Best effort on the way out: the run's own exception matters more than this bookkeeping.
    with suppress(stopping.StopRequested):
        with stopping.critical():
            store.try_set_state(state, detail)


def run_fingerprint(config: ExperimentConfig, bank: list[Persona] | None) -> str:
    bank_hash = hashlib.sha256("".join(p.model_dump_json() for p in bank).encode()).hexdigest() if bank else "generated"
    extra = [fingerprint_extra(config)] if isinstance(config, SocietyConfig) else []  # the graph it runs on
    return config.fingerprint(f"bank={bank_hash}", f"templates={TEMPLATE_VERSION}", *extra)


def _check_no_strays(store: RunStore, specs: list[DebateSpec]) -> None:
    """Exports cover the whole database, so it must hold exactly this plan's debates."""
    stray = store.debate_ids() - {s.debate_id for s in specs}
    if stray:
        raise DebatelabError(f"run directory {store.path.parent} holds {len(stray)} debate(s) that this "
                             "config does not plan (made by another debatelab version?); choose another --out")


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _check_identity(store: RunStore, llm: LLM, seats: Mapping[str, LLM]) -> None:
    ident: dict[str, Any] = llm.identity()
    if seats:  # runs without per-agent models keep the identity format they always had
        ident = {"experiment": ident, "seats": {k: s.identity() for k, s in sorted(seats.items())}}
    identity = json.dumps(ident, sort_keys=True)
    known = store.bind_identity(identity)
    if known is not None and known != identity:
        raise DebatelabError(f"run directory {store.path.parent} was made with a different model ({known}); "
                             "choose another --out")


def _run_personas(config: ExperimentConfig, llm: LLM, store: RunStore, run_dir: Path) -> list[Persona]:
    bank = generate_bank(config, llm, on_batch=store.add_personas, existing=store.personas())
    save_bank(bank, run_dir / "personas.jsonl")
    return bank


def _provenance(config: ExperimentConfig) -> dict[str, Any]:
    versions = {}
    for pkg in ("debatelab", "torch", "transformers", "openai", "pydantic"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "config": config.model_dump(mode="json"), "created_at": time.time(),
        "python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
    }


class _Progress:
    """tqdm bar over debates with turns and tokens/s in its postfix."""

    def __init__(self, total: int, store: RunStore, backends: list[LLM], enabled: bool):
        from tqdm import tqdm

        # Each counter once: adapter views of one engine count their own share of a mixed call.
        self.usages = list({id(u): u for u in (b.usage for b in backends) if u is not None}.values())
        self.turns = 0
        self.start = time.monotonic()
        self.tokens_before = self._tokens()  # persona generation is not debate throughput
        done = store.counts().get("complete", 0)
        self.bar = tqdm(total=total, initial=done, desc="debates", unit="debate", disable=not enabled,
                        dynamic_ncols=True)

    def update(self, finished: int, turns: int) -> None:
        self.turns += turns
        rate = (self._tokens() - self.tokens_before) / max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix(turns=self.turns, tok_s=f"{rate:.1f}", refresh=False)
        self.bar.update(finished)

    def _tokens(self) -> int:
        return sum(u.completion_tokens for u in self.usages)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
