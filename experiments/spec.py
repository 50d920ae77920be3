"""Sweep specs: a YAML grid over dotted config keys, expanded into runs identified by their config hash."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeplab.config import Config, config_hash, flatten, load_config, to_dict
from deeplab.errors import DeeplabError
from deeplab.yaml_loader import load_yaml_file
from experiments.axes import run_name
from experiments.errors import ExperimentsError

DEVICES = ("cuda", "cpu", "auto")
# Config fields that hold a path: written relative in a spec's overrides or grid, they are the spec's, like its base
PATH_KEYS = ("data.root", "data.cache", "model.weights")
WEIGHT_NAMES = ("none", "imagenet")  # model.weights values that name weights rather than a file


@dataclass
class SlurmSpec:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 2
    tasks_per_node: int = 2
    cpus_per_task: int = 8
    mem: str = "64G"
    time: int = 1440  # minutes per attempt; longer runs are checkpointed and requeued
    constraint: str | None = None
    array_parallelism: int = 16
    max_requeues: int = 10
    # the jobs' device, over the config's train.device and not part of a run's identity: cuda is an error on a
    # node without a usable GPU, never a silent CPU run (the local cluster's GPUs are fake: cpu there)
    device: str | None = None
    # SIGUSR2 this long before the time limit: the current iteration, a validation already under way (~1-2 min on
    # the full val split) and the checkpoint (bench/bench_checkpoint.py) must fit, or the attempt's work is lost
    signal_lead_s: int = 300


@dataclass
class LocalSpec:
    parallelism: int = 2
    threads_per_job: int = 0  # 0 = cores / parallelism


MAX_RUNS = 10_000  # runs one spec may expand to: each is an MLflow run, a run directory and a job
MAX_SEEDS = 1_000  # seeds per backbone a sequential study may raise its maximum to


@dataclass(frozen=True)
class SequentialSpec:
    """analysis.sequential: looks at these seeds per backbone (the last = the grid's seeds), Lan-DeMets spending,
    optional non-binding futility, and a pilot: the first look's sd may raise the maximum to ``max_seeds``
    when it exceeds ``planning_sd``, the sd the looks were sized for."""

    looks: tuple[int, ...]
    spending: str = "obrien-fleming"
    futility: bool = False
    max_seeds: int | None = None
    planning_sd: float | None = None


@dataclass
class SweepSpec:
    name: str
    base: Path
    grid: dict[str, list[Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    local: LocalSpec = field(default_factory=LocalSpec)
    runs_root: Path = Path("runs")  # relative to the spec file when given there; else ./runs of the command
    tracking_uri: str | None = None
    path: Path | None = None
    margin: float | None = None  # analysis.margin: the equivalence margin in mIoU points the study is sized for
    paired: bool = False  # analysis.paired: seed i of each backbone paired (shared data order and augmentation)
    sequential: SequentialSpec | None = None  # analysis.sequential

    @property
    def experiment(self) -> str:
        return self.name


@dataclass
class RunSpec:
    """One grid cell: its resolved config, identity and place on disk."""

    config: Config
    config_hash: str
    name: str
    values: dict[str, Any]
    run_dir: Path


_TOP = {"name", "base", "grid", "overrides", "executor", "runs_root", "tracking", "analysis"}


def _unknown(keys: Any, known: Any, where: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(sorted(known))})"
            raise ExperimentsError(f"{where}: unknown key {key!r}{hint}")


def _section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ExperimentsError(f"{where}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _unknown(data, fields, where)
    for key, value in data.items():
        default = getattr(cls(), key)
        expected = int if isinstance(default, int) else str
        if (value is not None and not isinstance(value, expected)) or isinstance(value, bool):
            raise ExperimentsError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
        if expected is int and value < (0 if key == "threads_per_job" else 1):
            raise ExperimentsError(f"{where}.{key}: must be positive, got {value}")
        if key == "device" and value is not None and value not in DEVICES:
            raise ExperimentsError(f"{where}.{key}: expected one of {', '.join(DEVICES)}, got {value!r}")
    return cls(**data)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec. Every relative path written in it resolves against the spec file's folder
    (base, runs_root, a sqlite tracking.uri, and data.root, data.cache and model.weights in overrides and grid
    values), so the spec means the same from any working directory; what it leaves unset defaults to the working
    directory (./runs, ./mlflow.db)."""
    path = Path(path)
    try:
        data = load_yaml_file(path, "sweep spec")
    except DeeplabError as err:
        raise ExperimentsError(str(err)) from None
    if not isinstance(data, dict):
        raise ExperimentsError(f"sweep spec {path}: expected a mapping at the top level")
    _unknown(data, _TOP, f"sweep spec {path}")
    for key in ("name", "base", "grid"):
        if key not in data:
            raise ExperimentsError(f"sweep spec {path}: missing {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ExperimentsError(f"sweep spec {path}: name must be letters, digits, '-' or '_', got {name!r}")
    grid = data["grid"]
    if not isinstance(grid, dict) or not grid:
        raise ExperimentsError(f"sweep spec {path}: grid is empty; give at least one config key with a list of values")
    for key, expected in (
        ("overrides", dict),
        ("executor", dict),
        ("tracking", dict),
        ("base", str),
        ("runs_root", str),
    ):
        if data.get(key) is not None and not isinstance(data[key], expected):
            kind = "a mapping" if expected is dict else "a path"
            raise ExperimentsError(f"sweep spec {path}: {key} must be {kind}, got {data[key]!r}")
    for section in ("grid", "overrides"):
        for key in data.get(section) or {}:
            if not isinstance(key, str):
                raise ExperimentsError(
                    f"sweep spec {path}: {section} key {key!r} must be a string (a dotted config key such as "
                    "model.backbone)"
                )
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ExperimentsError(f"sweep spec {path}: grid.{key} must be a non-empty list, got {values!r}")
    if (cells := math.prod(len(v) for v in grid.values())) > MAX_RUNS:
        raise ExperimentsError(
            f"sweep spec {path}: the grid expands to {cells:,} runs; at most {MAX_RUNS:,} per spec (split it)"
        )
    executor = data.get("executor") or {}
    _unknown(executor, {"slurm", "local"}, f"sweep spec {path}: executor")
    tracking = data.get("tracking") or {}
    _unknown(tracking, {"uri"}, f"sweep spec {path}: tracking")
    analysis = data.get("analysis") or {}
    if not isinstance(analysis, dict):
        raise ExperimentsError(f"sweep spec {path}: analysis must be a mapping, e.g. {{margin: 0.5}}")
    _unknown(analysis, {"margin", "paired", "sequential"}, f"sweep spec {path}: analysis")
    margin = analysis.get("margin")
    if margin is not None and not _positive(margin):
        raise ExperimentsError(f"sweep spec {path}: analysis.margin must be a positive number (points), got {margin!r}")
    paired = analysis.get("paired", False)
    if not isinstance(paired, bool):
        raise ExperimentsError(f"sweep spec {path}: analysis.paired must be true or false, got {paired!r}")
    sequential = _sequential(analysis.get("sequential"), grid, f"sweep spec {path}: analysis.sequential")
    if sequential is not None:
        _sequential_grid(grid, margin, f"sweep spec {path}")
    base = (path.parent / data["base"]).resolve()
    _check_keys(path, base, grid, "grid")
    _check_keys(path, base, data.get("overrides") or {}, "overrides")
    folder = path.absolute().parent
    return SweepSpec(
        name=name,
        base=base,
        grid={key: [_anchored(key, v, folder) for v in values] for key, values in grid.items()},
        overrides={key: _anchored(key, v, folder) for key, v in (data.get("overrides") or {}).items()},
        slurm=_section(SlurmSpec, executor.get("slurm"), "executor.slurm"),
        local=_section(LocalSpec, executor.get("local"), "executor.local"),
        runs_root=(path.parent / data["runs_root"]).resolve() if "runs_root" in data else Path.cwd() / "runs",
        tracking_uri=_anchored_uri(tracking.get("uri"), folder),
        path=path.resolve(),
        margin=float(margin) if margin is not None else None,
        paired=paired,
        sequential=sequential,
    )


def _anchored(key: str, value: Any, folder: Path) -> Any:
    """A config path written relative in the spec, made absolute against the spec's folder (inside a mapping of a
    section too); other values as they are."""
    if isinstance(value, dict):
        return {k: _anchored(f"{key}.{k}", v, folder) for k, v in value.items()}
    if key not in PATH_KEYS or not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    if key == "model.weights" and value in WEIGHT_NAMES:
        return value
    return os.path.normpath(folder / value)


def _anchored_uri(uri: Any, folder: Path) -> Any:
    """A ``sqlite:///relative.db`` tracking URI made absolute against the spec's folder; any other as it is."""
    from experiments.store.uri import sqlite_path

    db = sqlite_path(uri) if isinstance(uri, str) else None
    if db is None or db.is_absolute() or str(db) == ":memory:":
        return uri
    return f"sqlite:///{os.path.normpath(folder / db)}"


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < 1e9


def _sequential(data: Any, grid: dict[str, list[Any]], where: str) -> SequentialSpec | None:
    """analysis.sequential, validated: every error names the field."""
    if data is None:
        return None
    from experiments.sequential import MAX_LOOKS, SPENDING  # here: scipy loads only for a spec that plans looks

    if not isinstance(data, dict):
        raise ExperimentsError(f"{where} must be a mapping, e.g. {{looks: [4, 8, 12, 16], spending: obrien-fleming}}")
    _unknown(data, {f.name for f in dataclasses.fields(SequentialSpec)}, where)
    looks = data.get("looks")
    if (
        not isinstance(looks, list)
        or not 0 < len(looks) <= MAX_LOOKS
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in looks)
        or looks[0] < 2
        or any(b <= a for a, b in itertools.pairwise(looks))
    ):
        raise ExperimentsError(
            f"{where}.looks must be 1 to {MAX_LOOKS} increasing seed counts per backbone from 2, got {looks!r}"
        )
    seeds = grid.get("train.seed")
    if isinstance(seeds, list) and len(seeds) != looks[-1]:
        raise ExperimentsError(f"{where}.looks must end at the grid's {len(seeds)} seeds, got {looks[-1]}")
    spending = data.get("spending", "obrien-fleming")
    if spending not in SPENDING:
        raise ExperimentsError(f"{where}.spending must be one of {', '.join(SPENDING)}, got {spending!r}")
    futility = data.get("futility", False)
    if not isinstance(futility, bool):
        raise ExperimentsError(f"{where}.futility must be true or false, got {futility!r}")
    max_seeds, sd = data.get("max_seeds"), data.get("planning_sd")
    if max_seeds is not None and (
        isinstance(max_seeds, bool) or not isinstance(max_seeds, int) or not looks[-1] <= max_seeds <= MAX_SEEDS
    ):
        raise ExperimentsError(
            f"{where}.max_seeds must be a whole number from the last look ({looks[-1]}) to {MAX_SEEDS}, "
            f"got {max_seeds!r}"
        )
    if sd is not None and not _positive(sd):
        raise ExperimentsError(f"{where}.planning_sd must be a positive number (points), got {sd!r}")
    if max_seeds is not None and max_seeds > looks[-1] and sd is None:
        raise ExperimentsError(f"{where}.planning_sd: needed when max_seeds lets the pilot raise the maximum")
    return SequentialSpec(tuple(looks), spending, futility, max_seeds, float(sd) if sd is not None else None)


def _sequential_grid(grid: dict[str, list[Any]], margin: Any, where: str) -> None:
    """A sequential study compares two backbones over seeds: one value on every other axis, and a margin."""
    if margin is None:
        raise ExperimentsError(f"{where}: analysis.margin is needed by analysis.sequential (points, e.g. 0.5)")
    if len(grid.get("model.backbone") or []) != 2:
        raise ExperimentsError(f"{where}: analysis.sequential needs grid.model.backbone, the two backbones compared")
    seeds = grid.get("train.seed")
    if (
        not isinstance(seeds, list)
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or (len(set(seeds)) != len(seeds))
    ):
        raise ExperimentsError(f"{where}: analysis.sequential needs grid.train.seed, a list of distinct whole numbers")


def wide_axis(spec: SweepSpec) -> str | None:
    """A grid axis besides backbone and seed with several values: the spec compares several configurations, which
    `advance` cannot step look by look (the report still reads each cell's looks)."""
    return next((k for k, v in spec.grid.items() if k not in ("model.backbone", "train.seed") and len(v) > 1), None)


def _check_keys(path: Path, base: Path, section: dict[str, Any], where: str) -> None:
    """Every grid/overrides key names a config field, checked here so the error names the spec, not the base."""
    try:
        known = flatten(to_dict(load_config(base)))
    except DeeplabError as err:
        raise ExperimentsError(f"sweep spec {path}: base {err}") from None
    sections = {k.rsplit(".", 1)[0] for k in known}
    for key in section:
        if not isinstance(key, str) or key in known or key in sections:
            continue
        close = difflib.get_close_matches(str(key), [*known, *sections], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ExperimentsError(f"sweep spec {path}: {where}.{key} is not a config key{hint}")


def expand_grid(spec: SweepSpec, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """Cartesian product of the grid over the base config (+ spec and CLI overrides), one RunSpec per cell."""
    keys = list(spec.grid)
    runs, seen = [], set()
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        try:
            cfg = load_config(spec.base, {**spec.overrides, **(overrides or {}), **values})
        except DeeplabError as err:
            raise ExperimentsError(f"sweep {spec.name}: {err}") from None
        digest = config_hash(cfg)
        if digest in seen:
            continue
        seen.add(digest)
        runs.append(RunSpec(cfg, digest, run_name(cfg, keys), values, spec.runs_root / spec.name / digest))
    return runs
