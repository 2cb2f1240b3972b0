"""Run ``debatelab run ...`` in a child process under a test's control.

    python crash_driver.py [--slow S] [--kill WHERE:CALLER:N] [--trace FILE] -- run CONFIG --out DIR --quiet

``--slow`` adds S seconds to every model call (of the scripted backend or the embedded model), so
a parent can signal or kill at random moments.
``--kill`` sends SIGKILL to this very process at a chosen point: the N-th (from 1) commit made
by the store method CALLER (``add_personas``, ``register``, ``add_results``, ``mark_running``,
``claim``... or ``any``), or the N-th model call (CALLER ``any``). WHERE is ``before-commit`` (a transaction's statements are done but COMMIT has not started),
``in-commit`` (from another thread while the main thread is inside SQLite's COMMIT, so the kill
lands during the WAL write and fsync), ``after-commit`` (the COMMIT returned) and ``generate``
(inside a model call; call 1 is persona generation when the run generates its personas).
``--trace`` appends one line per commit ("N caller") and per model call, and "KILL ..." just
before a kill, so the parent knows what each kill interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import threading
import time
import traceback
from pathlib import Path

from debatelab import cli
from debatelab.llm import embedded, scripted


class Hooks:
    def __init__(self, kill: str, trace: Path | None, slow: float):
        where, caller, nth = kill.split(":")
        self.where, self.caller, self.nth = where, caller, int(nth)
        self.trace, self.slow = trace, slow
        self.commits: dict[str, int] = {}
        self.calls = 0

    def log(self, line: str) -> None:
        if self.trace is None:
            return
        with self.trace.open("a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def die(self, what: str) -> None:
        self.log(f"KILL {what}")
        os.kill(os.getpid(), signal.SIGKILL)

    def commit(self, run_commit) -> None:
        caller = _store_caller()
        for key in (caller, "any"):
            self.commits[key] = self.commits.get(key, 0) + 1
        self.log(f"commit {caller}")
        mine = self.caller in (caller, "any") and self.commits[self.caller] == self.nth
        if mine and self.where == "before-commit":
            self.die(f"before-commit {caller}")
        if mine and self.where == "in-commit":
            self.log(f"KILL in-commit {caller}")
            # The main thread releases the GIL inside sqlite3_step, so this kill lands mid-COMMIT.
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGKILL)).start()
        run_commit()
        if mine and self.where == "in-commit":
            time.sleep(5)  # the commit beat the kill; wait for it rather than carry on
        if mine and self.where == "after-commit":
            self.die(f"after-commit {caller}")

    def model_call(self) -> None:
        self.calls += 1
        self.log(f"call {self.calls}")
        if self.slow:
            time.sleep(self.slow)
        if self.where == "generate" and self.calls == self.nth:
            self.die(f"generate {self.calls}")


def _store_caller() -> str:
    names = [frame.name for frame in traceback.extract_stack()]
    methods = [n for n in names if n in {"claim", "add_personas", "register", "add_results", "mark_running",
                                         "set_state", "_check_identity", "_migrate"}]
    return methods[-1] if methods else "other"


def install(hooks: Hooks) -> None:
    class Connection(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT":
                result: list[sqlite3.Cursor] = []
                hooks.commit(lambda: result.append(super(Connection, self).execute(sql, *args)))
                return result[0]
            return super().execute(sql, *args)

    real_connect = sqlite3.connect
    sqlite3.connect = lambda *a, **k: real_connect(*a, factory=Connection, **k)

    for method in ("generate", "score_options"):
        original = getattr(scripted.ScriptedLLM, method)

        def wrapped(self, requests, _original=original):
            hooks.model_call()
            return _original(self, requests)

        setattr(scripted.ScriptedLLM, method, wrapped)

    # The real embedded model: wrap the loaded instance (embedded.py imports no torch, so a
    # scripted run stays light).
    load_embedded = embedded.load_embedded

    def load_hooked(*args, **kwargs):
        llm = load_embedded(*args, **kwargs)
        for method in ("generate", "score_options"):
            def call(requests, _original=getattr(llm, method)):
                hooks.model_call()
                return _original(requests)

            setattr(llm, method, call)
        return llm

    embedded.load_embedded = load_hooked


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--kill", default="none:any:0")
    parser.add_argument("--trace", type=Path)
    args, rest = parser.parse_known_args()
    install(Hooks(args.kill, args.trace, args.slow))
    return cli.main([a for a in rest if a != "--"])


if __name__ == "__main__":
    sys.exit(main())
