"""The study's axes under one short name each: the child runs' tags, their run names, the runs frame's columns, the
report's cell labels and the parent run's cell metric names all come from this table and its rule.

A run's identity stays its dotted config keys (its MLflow params); the short name is what people read. Reading a run
back goes through its params (``deeplab.params.config_from_params``), never through these names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from deeplab.config import Config, to_dict

# Every child run carries these three, grid axes or not (the runs view groups by them); the runs frame's columns
SHORT_NAMES = {"model.backbone": "backbone", "train.iterations": "iterations", "train.seed": "seed"}
# tag names the project sets on runs itself: no axis takes one of them as its short name
RESERVED = frozenset(
    {"config_hash", "host", "source", "status", "failure_reason", "restart_count", "trainer", "log_file"}
)


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Each axis's short name: the table's, else its last dotted part (``model.weights`` → ``weights``), or the
    whole key when two of ``keys`` end alike or that part is taken (a name of the table, a tag of the project)."""
    keys = list(dict.fromkeys(keys))
    last = [k.rsplit(".", 1)[-1] for k in keys]
    taken = {*SHORT_NAMES.values(), *RESERVED}
    return {
        k: SHORT_NAMES.get(k) or (s if last.count(s) == 1 and s not in taken and "." in k else k)
        for k, s in zip(keys, last, strict=True)
    }


def axis_text(value: Any) -> str:
    """An axis value as text, never empty: strings as they are, anything else (numbers, lists, null) as JSON."""
    if isinstance(value, str) and value:
        return value
    if hasattr(value, "item"):  # a numpy scalar, as a frame hands it out
        value = value.item()
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def config_values(cfg: Config, keys: Iterable[str]) -> dict[str, Any]:
    """The config's value at each dotted key (a section's as a mapping), as the grid and MLflow params name them."""
    data, out = to_dict(cfg), {}
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def pieces(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> list[str]:
    """``["backbone=resnet50", "iterations=40000"]``: each axis as its short name and value text, in order."""
    names = short_names(values) if names is None else names
    return [f"{names[k]}={axis_text(v)}" for k, v in values.items()]


def run_name(cfg: Config, grid_keys: Iterable[str]) -> str:
    """A child run's name: its grid values as ``backbone=resnet50,iterations=40000,seed=0`` (its axis tags)."""
    values = config_values(cfg, grid_keys)
    return ",".join(pieces(values, short_names(values)))


def axis_tags(cfg: Config, grid_keys: Iterable[str]) -> dict[str, str]:
    """A child run's axis tags: the table's three from its config, grid axes or not, and every grid axis under
    its short name (values from the config as it ran, not as the spec spelled them)."""
    values = config_values(cfg, [*SHORT_NAMES, *grid_keys])
    return {name: axis_text(values[key]) for key, name in short_names(values).items()}
