"""The one YAML loader of the project (configs, sweep specs, ``--set`` values): PyYAML's safe loader that refuses
duplicate keys at any depth instead of letting the last one win silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from deeplab.errors import DeeplabError

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark, mapping: yaml.Mark) -> None:
        super().__init__("while reading a mapping", mapping, f"duplicate key {key!r}", again)
        self.first_line = first.line + 1


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings reject a repeated key (``<<`` merges may still be overridden)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if seen:
                    raise DuplicateKeyError(key, first[key], key_node.start_mark, node.start_mark)
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# A config or spec has hundreds of values; aliases that expand to more are a "billion laughs" document, refused
# from its node graph before anything is built (the built objects share lists, but copying them would not).
MAX_EXPANDED_NODES = 100_000


class AliasBombError(yaml.YAMLError):
    """A document whose aliases expand to more values than any config holds."""


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes of the document once every alias is expanded (shared nodes counted each time they are used)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once here; the constructor rejects nothing, but the cap holds
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_EXPANDED_NODES + 1)
    return memo[id(node)]


def parse_yaml(text: str | bytes) -> Any:
    """Parse YAML text with UniqueKeyLoader (raises ``yaml.YAMLError``; AliasBombError past MAX_EXPANDED_NODES)."""
    loader = UniqueKeyLoader(text)  # a SafeLoader subclass: no arbitrary objects
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise AliasBombError(f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values; refused unread")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """``line N: duplicate key 'model' (first at line M)`` or ``line N: not valid YAML (problem)``."""
    if isinstance(err, AliasBombError):
        return f": {err}"
    if isinstance(err, yaml.reader.ReaderError):  # bytes that are not text (binary data, another encoding)
        return f": not valid YAML (byte {err.position}: {err.reason})"
    mark = getattr(err, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    problem = getattr(err, "problem", None) or err.__class__.__name__
    if isinstance(err, DuplicateKeyError):
        return f"{where}: {problem} (first at line {err.first_line})"
    return f"{where}: not valid YAML ({problem})"


def load_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse one YAML file; every failure is a DeeplabError that starts with ``what`` and the path."""
    path = Path(path)
    if path.is_dir():
        raise DeeplabError(f"{what} {path}: is a directory, expected a YAML file")
    try:
        raw = path.read_bytes()  # bytes: PyYAML checks the encoding and reports bad characters as a YAMLError
    except FileNotFoundError:
        raise DeeplabError(f"{what} not found: {path}") from None
    except OSError as err:
        raise DeeplabError(f"{what} {path}: {err.strerror}") from None
    try:
        return parse_yaml(raw)
    except yaml.YAMLError as err:
        raise DeeplabError(f"{what} {path}{describe_yaml_error(err)}") from None
