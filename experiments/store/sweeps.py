"""A sweep in the store: one parent run per sweep (its grid's axes in a tag), one child run per grid cell."""

from __future__ import annotations

import ast
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeplab.tracking import (
    COST_DEVICE_HOURS,
    COST_WALL_HOURS,
    METRICS_FILE,
    TAGS_FILE,
    complete_lines,
    read_record_json,
    read_status,
    write_record_json,
    write_status,
)
from experiments.errors import ExperimentsError
from experiments.store.client import open_client
from experiments.store.mirror import (
    PARENT_DIR,
    PARENT_TAG,
    RUN_FILE,
    RUN_NAME_TAG,
    append_points,
    mirror_run,
    read_run_id,
    start_record,
    write_run_id,
)
from experiments.store.uri import sqlite_path
from experiments.store.write import (
    TERMINAL,
    find_experiment,
    quoted,
    search,
)

PARENT_ROLE = "parent"
GRID_TAG = "sweep.grid"  # JSON {dotted config key: [values]}: every value the sweep's grids have held
MAX_GRID_TAG = 8000  # MLflow's limit on a tag value


@dataclass
class ChildRun:
    run_id: str
    status: str
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class NewChild:
    """One grid cell's child run to create: its config hash, name, params (the resolved config) and tags."""

    config_hash: str
    run_name: str
    params: dict[str, Any]
    tags: dict[str, str]
    run_dir: Path


def merged_grid(old: dict[str, list], new: dict[str, list]) -> dict[str, list]:
    """Axes of both grids, each with the values of both (old first): adding seeds keeps the earlier ones."""
    out = {k: list(v) for k, v in old.items()}
    for key, values in new.items():
        out.setdefault(key, [])
        out[key] += [v for v in values if v not in out[key]]
    return out


def parent_run(uri: str, experiment_id: str, sweep_name: str) -> str | None:
    """The sweep's parent run, else None."""
    found = search(uri, experiment_id, f"tags.`sweep.name` = {quoted(sweep_name)} and tags.`sweep.role` = 'parent'")
    return found[0].info.run_id if found else None


def ensure_parent_run(
    uri: str,
    experiment_id: str,
    sweep_name: str,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    *,
    folder: Path,
    grid: dict[str, list] | None = None,
) -> str:
    """The sweep's parent run (one per sweep name), its record in ``folder/parent``: created when missing (a
    parent the store holds from before records is adopted); ``grid`` is merged into its ``sweep.grid`` tag."""
    record = folder / PARENT_DIR
    recorded = read_record_json(record, TAGS_FILE)
    if read_run_id(record) is None and (found := parent_run(uri, experiment_id, sweep_name)) is not None:
        write_run_id(record, found, uri)
        recorded = {**open_client(uri).get_run(found).data.tags, **recorded}
    old = json.loads(recorded.get(GRID_TAG, "{}"))
    new_tags = {**(tags or {}), "sweep.name": sweep_name, "sweep.role": PARENT_ROLE, RUN_NAME_TAG: sweep_name}
    if grid is not None:
        text = json.dumps(merged_grid(old, grid))
        if len(text) > MAX_GRID_TAG:
            raise ExperimentsError(
                f"sweep {sweep_name}: its grid is {len(text)} characters as JSON (MLflow keeps 8000)"
            )
        new_tags[GRID_TAG] = text
    start_record(record, tags=new_tags, params=params)  # tags recorded first stay (the first sweep's commit)
    if GRID_TAG in new_tags:  # the merged grid replaces the recorded one
        write_record_json(record, TAGS_FILE, {**read_record_json(record, TAGS_FILE), GRID_TAG: new_tags[GRID_TAG]})
    return mirror_run(uri, record, experiment_id=experiment_id).run_id


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, ChildRun]:
    """The parent's child runs by config hash (one paged search)."""
    out = {}
    for run in search(uri, experiment_id, f"tags.`mlflow.parentRunId` = {quoted(parent_run_id)}"):
        digest = run.data.tags.get("config_hash")
        if digest:
            out[digest] = ChildRun(run.info.run_id, run.info.status, dict(run.data.metrics), dict(run.data.tags))
    return out


def _ensure_child(
    uri: str, experiment_id: str, parent_run_id: str, cell: NewChild, existing: dict[str, ChildRun]
) -> ChildRun:
    """A cell's run: its record's MLflow run, else the store's child of that config hash (adopted), else new."""
    run_id = read_run_id(cell.run_dir)
    known = {c.run_id: c for c in existing.values()}
    if run_id in known:
        return known[run_id]
    if run_id is None and cell.config_hash in existing:
        write_run_id(cell.run_dir, existing[cell.config_hash].run_id, uri)
        return existing[cell.config_hash]
    tags = {**cell.tags, "config_hash": cell.config_hash, RUN_NAME_TAG: cell.run_name}
    start_record(cell.run_dir, tags=tags, params=cell.params, status="SCHEDULED")
    done = mirror_run(uri, cell.run_dir, experiment_id=experiment_id)  # RUNNING once its job starts
    status = read_status(cell.run_dir) or {"status": "SCHEDULED"}
    return ChildRun(
        done.run_id, status["status"], {}, {**{k: str(v) for k, v in tags.items()}, PARENT_TAG: parent_run_id}
    )


def ensure_child_runs(
    uri: str, experiment_id: str, parent_run_id: str, cells: list[NewChild], workers: int = 8
) -> dict[str, ChildRun]:
    """Every cell's child run by config hash: existing ones found (a resubmission continues them), the rest
    recorded in their run directories SCHEDULED with their params and tags, and mirrored. A sqlite store takes
    its writers one at a time (threads only queue for its lock), a server or PostgreSQL gets the runs from a
    thread pool."""
    existing = child_runs(uri, experiment_id, parent_run_id)

    def one(cell: NewChild) -> ChildRun:
        return _ensure_child(uri, experiment_id, parent_run_id, cell, existing)

    if sqlite_path(uri) is not None or len(cells) < 2:
        made = [one(cell) for cell in cells]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            made = list(pool.map(one, cells))
    return {cell.config_hash: child for cell, child in zip(cells, made, strict=True)}


def child_dirs(folder: Path) -> list[Path]:
    """The run directories of a sweep that record an MLflow run (every grid the sweep has had)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name != PARENT_DIR and (p / RUN_FILE).is_file())


def update_parent(uri: str, folder: Path) -> str | None:
    """The sweep's parent record from its children's records, then mirrored: each ``cost/…`` hours metric summed
    over the children (step = Unix seconds: the UI shows the newest), and the status: FINISHED once every child
    finished, FAILED once none is left going but some did not finish, RUNNING while any is. Each child calls
    this after ending itself, so the last one to end closes it. Returns the parent's status."""
    record = folder / PARENT_DIR
    if read_run_id(record) is None:
        return None
    children = child_dirs(folder)
    sums = {COST_WALL_HOURS: 0.0, COST_DEVICE_HOURS: 0.0}
    for run_dir in children:  # each child's latest recorded point: what its own run page shows
        lines, _ = complete_lines(run_dir / METRICS_FILE)
        latest: dict[str, tuple[int, float]] = {}
        for line in (x for x in lines if '"cost/' in x):
            point = json.loads(line)
            if point["key"] in sums and point["step"] >= latest.get(point["key"], (-1, 0.0))[0]:
                latest[point["key"]] = (point["step"], point["value"])
        for key, (_, value) in latest.items():
            sums[key] += value
    append_points(record, sums)
    statuses = [(read_status(d) or {}).get("status") for d in children]
    status = "RUNNING"
    if statuses and all(s in TERMINAL for s in statuses):
        status = "FINISHED" if all(s == "FINISHED" for s in statuses) else "FAILED"
    if (read_status(record) or {}).get("status", "RUNNING") != status:
        write_status(record, status)
    mirror_run(uri, record)
    return status


def sweep_axes(uri: str, experiment: str, sweep: str | None = None) -> dict[str, list]:
    """The grid axes recorded on the sweep's parent run ({dotted config key: [values]}); ``{}`` when there is no
    parent run. ``sweep`` defaults to the experiment's name (a sweep's experiment is named after it)."""
    eid = find_experiment(uri, experiment)
    if eid is None:
        raise ExperimentsError(f"no MLflow experiment named {experiment!r} in {uri}")
    parent = parent_run(uri, eid, sweep or experiment)
    if parent is None:
        return {}
    run = open_client(uri).get_run(parent)
    if GRID_TAG in run.data.tags:
        return json.loads(run.data.tags[GRID_TAG])
    # parent runs of sweeps from before the tag existed: one param grid.<key> = the list's repr
    return {k[len("grid.") :]: ast.literal_eval(v) for k, v in run.data.params.items() if k.startswith("grid.")}
