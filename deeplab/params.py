"""A run's Config back from its flattened params, as MLflow stores them (``str(value)`` per dotted key)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from deeplab.config import Config, from_dict
from deeplab.errors import DeeplabError


def config_from_params(params: Mapping[str, Any]) -> Config:
    """A run's Config from its flattened params as MLflow stores them (strings; other keys such as ``info.*``
    are skipped; keys a run predates take their defaults). Types are checked, today's rules across fields are not:
    a run that ran is read as it ran (an imported log's few params, a rule added since)."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        tp = _field_type(key)
        if tp is _MISSING:
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if node is None:
                break
        else:
            node[leaf] = _parse(key, value, tp)
    return from_dict(nested, check=False)


_MISSING = object()


@functools.cache  # a handful of keys, read for every run of a store
def _field_type(dotted: str) -> Any:
    tp: Any = Config
    for part in dotted.split("."):
        tp = _unwrap_optional(tp)
        if not dataclasses.is_dataclass(tp):
            return _MISSING
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return _MISSING
        tp = hints[part]
    return tp


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def _parse(key: str, value: Any, tp: Any) -> Any:
    """MLflow keeps ``str(value)``: strings stay as they are, None is "None", the rest reads back as YAML."""
    if not isinstance(value, str):
        return value
    if value == "None":
        return None
    inner = _unwrap_optional(tp)
    if inner is str or (
        typing.get_origin(inner) is Literal and all(isinstance(a, str) for a in typing.get_args(inner))
    ):
        return value
    try:
        return _yaml_value(value)
    except yaml.YAMLError:
        raise DeeplabError(f"run param {key}: {value[:60]!r} is not a value of this config") from None


@functools.lru_cache(maxsize=4096)  # runs of a sweep share most values; from_dict copies what it is given
def _yaml_value(text: str) -> Any:
    return yaml.safe_load(text)
