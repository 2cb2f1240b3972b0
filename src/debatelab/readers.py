"""Reading user-supplied files (text, YAML, JSONL) with bounds, each failure one clear line."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import DebatelabError, first_line

MAX_TEXT_BYTES = 256 * 2**20
"""Largest text file (persona bank, JSONL dataset, questions) debatelab reads: 256 MiB, far above
a 20,000-persona bank (about 60 MiB); a device or a runaway file fails at once instead of
filling memory."""
MAX_YAML_BYTES = 4 * 2**20
"""Largest YAML file (config, topic file, study config): 4 MiB, about 30,000 inline topics."""
MAX_YAML_VALUES = 2 * MAX_YAML_BYTES
"""Most a YAML document may hold once aliases are expanded, counting one per node plus one per
character of each scalar: a file without aliases always stays below it, an alias bomb
("billion laughs") does not."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings and lists in a YAML file (configs need about 5)."""


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"


def read_text(path: Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """Read a user-supplied text file of at most ``limit`` bytes, turning every way it can fail
    into one clear line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise DebatelabError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DebatelabError(f"{what} is a directory, not a file: {path}") from None
    except ValueError:  # an embedded NUL byte in the path
        raise DebatelabError(f"{what} path {str(path)!r} contains a NUL byte") from None
    except OSError as exc:
        raise DebatelabError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise DebatelabError(f"{what} {path} is larger than {_size(limit)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DebatelabError(f"{what} is not UTF-8 text: {path}") from None


def describe_yaml_error(exc: Exception) -> str:
    """'<problem> (line N)' from a PyYAML error, on one line."""
    problem = getattr(exc, "problem", None) or first_line(exc)
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1})" if mark is not None else problem


class _BadYaml(Exception):
    """A YAML document that parses but that debatelab refuses (duplicate key, alias bomb)."""


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=1)
def _loader_class() -> type:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: fast, and bounds flow nesting

    class Loader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            # A repeated key would silently keep its last value: refuse it. Keys that a merge
            # (<<: *defaults) brings in may still be overridden, as YAML intends.
            if isinstance(node, yaml.MappingNode):
                seen: dict[object, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in seen:
                            raise _BadYaml(f"duplicate key {_short(key)} on line {key_node.start_mark.line + 1} "
                                           f"(first on line {seen[key] + 1})")
                        seen[key] = key_node.start_mark.line
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
            return super().construct_mapping(node, deep=deep)

    return Loader


def _check_expansion(root: Any) -> None:
    """Refuse a node graph that refers to itself, nests deeper than MAX_YAML_DEPTH or whose
    aliases expand past MAX_YAML_VALUES (one per node plus one per scalar character), counting
    what the aliases bring in. Iterative, and linear in the number of distinct nodes: a node an
    alias shares is measured once."""
    import yaml

    def children(node: Any) -> list[Any]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        if closing:
            open_nodes.discard(id(node))
            below = [measured[id(c)] for c in children(node)]
            size = 1 + sum(s for s, _ in below)
            height = 1 + max((h for _, h in below), default=0)
            if size > MAX_YAML_VALUES:
                raise _BadYaml(f"its aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?)")
            if height > MAX_YAML_DEPTH:
                raise _BadYaml(f"it nests deeper than {MAX_YAML_DEPTH} levels (line {node.start_mark.line + 1})")
            measured[id(node)] = (size, height)
        elif id(node) in measured:
            continue
        elif id(node) in open_nodes:
            raise _BadYaml(f"an alias refers to itself (line {node.start_mark.line + 1})")
        elif isinstance(node, yaml.ScalarNode):
            measured[id(node)] = (1 + len(node.value), 1)
        else:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children(node) if id(c) not in measured)


def read_yaml(path: Path, what: str) -> object:
    """Parse a user-supplied YAML file (at most MAX_YAML_BYTES); unreadable or invalid files, a
    duplicate key, an alias bomb or a number too long to convert become one clear line."""
    import yaml

    text = read_text(path, what, limit=MAX_YAML_BYTES)
    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise DebatelabError(f"{what} {path} is not valid YAML: {describe_yaml_error(exc)}") from None
    except _BadYaml as exc:
        raise DebatelabError(f"{what} {path} is refused: {exc}") from None
    except ValueError as exc:  # an integer of more than 4,300 digits, a date like 2024-13-45
        problem = first_line(exc)
        if "integer string conversion" in problem:
            problem = "an integer of more than 4300 digits"
        raise DebatelabError(f"{what} {path} holds a value that cannot be read: {problem}") from None
    except RecursionError:
        raise DebatelabError(f"{what} {path} nests too deeply") from None
    finally:
        loader.dispose()


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a user-supplied JSONL file; a line that is
    not a JSON object becomes one clear line. Splits on "\n" only: U+2028 and friends may sit
    inside JSON strings, where str.splitlines() would cut them."""
    rows = []
    for number, line in enumerate(read_text(path, what).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DebatelabError(f"{what} {path} line {number} is not valid JSON ({exc.msg})") from None
        except (RecursionError, ValueError):  # nested too deeply; an integer of over 4,300 digits
            raise DebatelabError(f"{what} {path} line {number} cannot be read (nested too deeply or a "
                                 "number too long)") from None
        if not isinstance(row, dict):
            raise DebatelabError(f"{what} {path} line {number} is not a JSON object")
        rows.append((number, row))
    return rows
