"""A sweep in the store: one parent run per sweep (its grid's axes in a tag), one child run per grid cell."""

from __future__ import annotations

import ast
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric

from deeplab.tracking import COST_DEVICE_HOURS, COST_WALL_HOURS
from experiments.errors import ExperimentsError
from experiments.store.client import open_client
from experiments.store.uri import sqlite_path
from experiments.store.write import (
    TERMINAL,
    batches,
    find_experiment,
    params_of,
    quoted,
    search,
    tags_of,
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
    grid: dict[str, list] | None = None,
) -> str:
    """The sweep's parent run (one per sweep name), created when missing; ``grid`` is merged into its
    ``sweep.grid`` tag."""
    client = open_client(uri)
    found = search(uri, experiment_id, f"tags.`sweep.name` = {quoted(sweep_name)} and tags.`sweep.role` = 'parent'")
    old = json.loads(found[0].data.tags.get(GRID_TAG, "{}")) if found else {}
    if found:
        run_id = found[0].info.run_id
    else:
        all_tags = {t.key: t.value for t in tags_of({**(tags or {}), "sweep.name": sweep_name})}
        run_id = client.create_run(experiment_id, run_name=sweep_name, tags={**all_tags, "sweep.role": PARENT_ROLE})
        run_id = run_id.info.run_id
        for _, p, _ in batches(params=params_of(params or {})):
            client.log_batch(run_id, params=p)
    if grid is not None:
        text = json.dumps(merged_grid(old, grid))
        if len(text) > MAX_GRID_TAG:
            raise ExperimentsError(
                f"sweep {sweep_name}: its grid is {len(text)} characters as JSON (MLflow keeps 8000)"
            )
        client.log_batch(run_id, tags=tags_of({GRID_TAG: text}))
    return run_id


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, ChildRun]:
    """The parent's child runs by config hash (one paged search)."""
    out = {}
    for run in search(uri, experiment_id, f"tags.`mlflow.parentRunId` = {quoted(parent_run_id)}"):
        digest = run.data.tags.get("config_hash")
        if digest:
            out[digest] = ChildRun(run.info.run_id, run.info.status, dict(run.data.metrics), dict(run.data.tags))
    return out


def _create_child(uri: str, experiment_id: str, parent_run_id: str, cell: NewChild) -> ChildRun:
    client = open_client(uri)
    tags = {t.key: t.value for t in tags_of({**cell.tags, "config_hash": cell.config_hash})}
    tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(experiment_id, run_name=cell.run_name, tags=tags).info.run_id
    client.update_run(run_id, status="SCHEDULED")  # RUNNING once its job starts (MlflowTracker.start)
    for _, p, _ in batches(params=params_of(cell.params)):
        client.log_batch(run_id, params=p)
    return ChildRun(run_id, "SCHEDULED", {}, tags)


def ensure_child_run(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    config_hash: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    existing: dict[str, ChildRun] | None = None,
) -> ChildRun:
    """The child run of one grid cell: found by config hash (a resubmission continues it) or created SCHEDULED."""
    existing = child_runs(uri, experiment_id, parent_run_id) if existing is None else existing
    if config_hash in existing:
        return existing[config_hash]
    return _create_child(uri, experiment_id, parent_run_id, NewChild(config_hash, run_name, params, tags))


def ensure_child_runs(
    uri: str, experiment_id: str, parent_run_id: str, cells: list[NewChild], workers: int = 8
) -> dict[str, ChildRun]:
    """Every cell's child run by config hash: existing ones found (a resubmission continues them), the rest
    created SCHEDULED with their params and tags. A sqlite store takes its writers one at a time (threads only
    queue for its lock), a server or PostgreSQL gets the runs from a thread pool."""
    existing = child_runs(uri, experiment_id, parent_run_id)
    todo = [cell for cell in cells if cell.config_hash not in existing]
    if sqlite_path(uri) is not None or len(todo) < 2:
        made = [_create_child(uri, experiment_id, parent_run_id, cell) for cell in todo]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            made = list(pool.map(lambda cell: _create_child(uri, experiment_id, parent_run_id, cell), todo))
    return {**existing, **{cell.config_hash: child for cell, child in zip(todo, made, strict=True)}}


def close_parent_if_done(uri: str, child_run_id: str) -> str | None:
    """End the sweep's parent run once none of its children is SCHEDULED or RUNNING: FINISHED when every child
    finished, FAILED otherwise. Each child calls this after ending itself, so the last one to end closes it.
    Returns the parent's new status, or None when children are still going."""
    client = open_client(uri)
    child = client.get_run(child_run_id)
    parent_id = child.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return None
    statuses = [c.status for c in child_runs(uri, child.info.experiment_id, parent_id).values()]
    if not statuses or any(status not in TERMINAL for status in statuses):
        return None
    status = "FINISHED" if all(status == "FINISHED" for status in statuses) else "FAILED"
    client.set_terminated(parent_id, status)
    return status


def sum_child_costs(uri: str, child_run_id: str) -> dict[str, float] | None:
    """The sweep's cost so far on its parent run: each ``cost/…`` hours metric summed over the children (their
    latest values), logged again at step 0 (the UI shows the newest point). Returns the sums, or None for a run
    without a parent."""
    client = open_client(uri)
    child = client.get_run(child_run_id)
    parent_id = child.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return None
    children = child_runs(uri, child.info.experiment_id, parent_id).values()
    sums = {key: sum(c.metrics.get(key, 0.0) for c in children) for key in (COST_WALL_HOURS, COST_DEVICE_HOURS)}
    now = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric(key, value, now, 0) for key, value in sums.items()])
    return sums


def reopen_parent(uri: str, parent_run_id: str) -> None:
    """A resubmission puts an ended parent run back to RUNNING (its children are about to run again)."""
    client = open_client(uri)
    if client.get_run(parent_run_id).info.status in TERMINAL:
        client.update_run(parent_run_id, status="RUNNING")


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
