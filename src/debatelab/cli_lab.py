"""``debatelab compare``: the mitigation lab (:mod:`debatelab.lab`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli_io import check_output_folder


def _cmd_compare(args: argparse.Namespace) -> int:
    from .lab.config import load_lab
    from .lab.run import run_lab

    lab = load_lab(args.lab)
    out = args.out or Path("runs") / f"lab-{lab.name or args.lab.stem}"
    check_output_folder(out, "lab folder")
    result = run_lab(lab, out, progress=not args.quiet)
    runs = sum(len(v) for v in result.runs.values())
    print(f"{len(result.runs)} methods, {runs} runs in {result.seconds:.1f} s -> {result.table} and {result.forest}")
    return 0


def add_commands(sub: Any) -> None:
    compare = sub.add_parser("compare", help="mitigation lab: the baseline and each method on the same personas, "
                             "seeds and topics, with convergence, echo-chamber index, pull, consistency, reply quality")
    compare.add_argument("lab", type=Path, help="lab file (YAML: experiments, methods; see experiments/mitigation/)")
    compare.add_argument("--out", type=Path, help="output folder (default runs/lab-<name>)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(func=_cmd_compare)
