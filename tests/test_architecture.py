"""The package's seams, checked from its source (issue 12): one owner of the database, backend
capabilities as methods rather than probes, no import cycle, small modules and functions, and
no two public types sharing a name."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "debatelab"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
DECLARATIVE_TABLES = {"debatelab.cli.build_parser"}  # argparse tables: one add_argument per option
CAPABILITIES = {"engine", "generate", "score_options", "generate_mixed", "score_options_mixed", "adapter",
                "with_adapter", "shares_engine", "usage", "prefix_cache", "close", "cache_stats", "clear_cache",
                "without_cache", "identity"}
DB_CALLS = {"execute", "executemany", "executescript", "read_sql", "read_sql_query", "read_sql_table"}
SQL = re.compile(r"\b(SELECT\s[\s\S]+?\sFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                 r"CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE|PRAGMA\s+\w+)\b")


@lru_cache(maxsize=1)
def modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(), str(path)))
    return out


def _outside(prefix: str) -> list[tuple[str, Path, ast.Module]]:
    return [(n, p, t) for n, (p, t) in modules().items() if n != prefix and not n.startswith(prefix + ".")]


def _is_package(name: str) -> bool:
    return modules()[name][0].name == "__init__.py"


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Package modules ``name`` imports, at any depth, except under ``if TYPE_CHECKING:``."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for part in node.body for n in ast.walk(part)}
    base = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                target = f"{anchor}.{node.module}" if node.module else anchor
            else:
                target = node.module or ""
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules() else target for a in node.names}
    found = {m for m in found if m in modules() and m != name}
    # Importing a.b.c from outside package a.b first runs a/b/__init__ (the root's excepted: it
    # is running already whenever anything in the package is imported).
    return found | {parent for m in found for parent in _parents(m)
                    if parent not in (name, "debatelab") and not name.startswith(parent + ".")}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    return sorted(nx.simple_cycles(nx.DiGraph(edges)), key=len)[:5]


def test_the_package_has_no_import_cycle():
    cycles = _cycles([(n, m) for n, (_, t) in modules().items() for m in _imports(n, t)])
    assert not cycles, f"import cycles: {cycles}"


def _database_use(name: str, tree: ast.Module) -> list[str]:
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "sqlite3" for a in node.names):
            offenders.append(f"{name} imports sqlite3")
        elif isinstance(node, ast.ImportFrom) and node.module == "sqlite3":
            offenders.append(f"{name} imports from sqlite3")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value == "sqlite3" or SQL.search(node.value):
                offenders.append(f"{name}:{node.lineno} {node.value[:60]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in DB_CALLS:
            offenders.append(f"{name}:{node.lineno} .{node.attr}")
    return offenders


def test_only_the_store_package_imports_sqlite3_or_holds_sql():
    offenders = [o for name, _, tree in _outside("debatelab.store") for o in _database_use(name, tree)]
    assert not offenders, offenders


def _probes(name: str, tree: ast.Module) -> list[str]:
    return [f"{name}:{node.lineno} {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and node.args[1].value in CAPABILITIES]


def test_no_backend_capability_is_probed_outside_the_llm_package():
    probes = [p for name, _, tree in _outside("debatelab.llm") for p in _probes(name, tree)]
    assert not probes, probes


def _long_functions(name: str, tree: ast.Module) -> list[str]:
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and f"{name}.{node.name}" not in DECLARATIVE_TABLES]


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_small(name):
    path, tree = modules()[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines"
    assert not _long_functions(name, tree), name


def _public_types(tree: ast.Module) -> list[str]:
    """Classes and type aliases (``Role = Literal[...]``, ``Key = str | None``, ``X: TypeAlias = ...``)."""
    names = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.Subscript, ast.BinOp)):
            names += [t.id for t in node.targets if isinstance(t, ast.Name) and t.id[:1].isupper() and not t.id.isupper()]
        elif isinstance(node, ast.AnnAssign) and "TypeAlias" in ast.unparse(node.annotation):
            names.append(ast.unparse(node.target))
    return [n for n in names if not n.startswith("_")]


def test_no_two_public_types_share_a_name():
    seen: dict[str, list[str]] = {}
    for name, (_, tree) in modules().items():
        for type_name in _public_types(tree):
            seen.setdefault(type_name, []).append(name)
    clashes = {t: where for t, where in seen.items() if len(where) > 1}
    assert not clashes, clashes


OFFENDER = ast.parse("""
import sqlite3
Key = str | None
def probe(llm):
    db.execute("SELECT 1 FROM t")
    return getattr(llm, "usage", None) or hasattr(llm, "with_adapter")
""" + "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)


def test_the_checks_see_what_they_claim_to():
    """Guards against a check that passes because it looks at nothing: each catches an offender."""
    assert len(modules()) > 50 and "debatelab.store" in modules()
    assert "debatelab.llm.base" in _imports("debatelab.runner", modules()["debatelab.runner"][1])
    assert "debatelab.llm" in _imports("debatelab.config_schema", modules()["debatelab.config_schema"][1])  # its __init__ runs
    assert SQL.search("SELECT a FROM t") and SQL.search("INSERT OR IGNORE INTO x") and not SQL.search("select a tool")
    assert len(_database_use("m", OFFENDER)) == 3  # the import, the SQL, the .execute
    assert len(_probes("m", OFFENDER)) == 2 and _long_functions("m", OFFENDER) == ["long (61 lines)"]
    assert _public_types(OFFENDER) == ["Key"]
    assert [sorted(c) for c in _cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])] == [["a", "b", "c"]]
