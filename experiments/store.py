"""The MLflow store: URI resolution, reachability, and the sweep's parent/child runs (created before fan-out)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from experiments.errors import ExperimentsError

PARENT_ROLE = "parent"
MAX_PARAM_LENGTH = 6000


def default_tracking_uri(project_dir: Path) -> str:
    return f"sqlite:///{Path(project_dir).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def resolve_tracking_uri(uri: str | None, project_dir: Path | None = None) -> str:
    """Explicit argument > MLFLOW_TRACKING_URI > sqlite file in the project directory. Always explicit."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(project_dir or Path.cwd())
    if not uri.startswith(("sqlite:///", "http://", "https://", "postgresql://", "postgresql+psycopg2://")):
        raise ExperimentsError(
            f"tracking URI {_redact(uri)!r}: use sqlite:///ABS/PATH.db, http(s)://HOST:PORT or postgresql://… "
            "(MLflow's file store is deprecated)"
        )
    if uri.startswith("postgresql://"):  # a bare scheme means psycopg 3 to SQLAlchemy ≥ 2.1; psycopg2 is installed
        from experiments.server import driver_uri

        uri = driver_uri(uri)
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the URI in the message, when the tracking store cannot be reached."""
    if (db := sqlite_path(uri)) is not None:
        parent = db.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ExperimentsError(f"tracking URI {uri}: directory {parent} does not exist or is not writable")
        return
    if uri.startswith("http"):
        # an API call, not /health: MLflow 3 answers /health to any Host but refuses API calls (403) addressed to
        # a host name it does not allow, which would otherwise surface only inside the jobs
        probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(probe, timeout=timeout_s) as response:
                if response.status == 200:
                    return
                reason = f"HTTP {response.status}"
        except urllib.error.HTTPError as err:
            reason = f"HTTP {err.code}" + (
                " (MLflow refuses this host name: use the server's IP address or start it with "
                "MLFLOW_SERVER_ALLOWED_HOSTS)"
                if err.code == 403
                else ""
            )
        except (TimeoutError, urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
        raise ExperimentsError(f"tracking URI {_redact(uri)} does not answer: {reason}")

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout_s)})
        with engine.connect():
            pass
    except Exception as err:  # any driver error means: not reachable
        raise ExperimentsError(f"tracking URI {_redact(uri)} does not answer: {_driver_reason(err, uri)}") from None


def _driver_reason(err: Exception, uri: str) -> str:
    """The driver's first message line (e.g. "connection refused"), any password of ``uri`` blanked out."""
    detail = str(getattr(err, "orig", None) or err).strip().splitlines()
    reason = f"{err.__class__.__name__}: {detail[0].strip()[:200]}" if detail else err.__class__.__name__
    try:
        password = sqlalchemy.engine.make_url(uri).password
    except Exception:  # an unparsable URI has no password to hide
        password = None
    return reason.replace(password, "***") if password else reason


def _redact(uri: str) -> str:
    """Hide a password in a database URI."""
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, creating store and experiment once (call before fanning jobs out).

    A new experiment of a sqlite store keeps its artifacts beside the database (``mlartifacts/``), not in MLflow's
    default ``./mlruns`` of whichever directory the first submission happened to start in."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_location is None and (db := sqlite_path(uri)) is not None:
        artifact_location = (db.resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _find_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _params(params: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]


def ensure_parent_run(
    uri: str, experiment_id: str, sweep_name: str, params: dict[str, Any], tags: dict[str, str]
) -> str:
    """The sweep's parent run (one per sweep name), created when missing."""
    client = MlflowClient(uri)
    found = _find_runs(client, experiment_id, f"tags.`sweep.name` = '{sweep_name}' and tags.`sweep.role` = 'parent'")
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=sweep_name, tags={**tags, "sweep.name": sweep_name, "sweep.role": PARENT_ROLE}
    )
    params_list = _params(params)
    for i in range(0, len(params_list), 100):
        client.log_batch(run.info.run_id, params=params_list[i : i + 100])
    return run.info.run_id


@dataclass
class ChildRun:
    run_id: str
    status: str
    metrics: dict[str, float]
    tags: dict[str, str]


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, ChildRun]:
    """The parent's child runs by config hash (one paged search)."""
    client = MlflowClient(uri)
    runs = _find_runs(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    out = {}
    for run in runs:
        digest = run.data.tags.get("config_hash")
        if digest:
            out[digest] = ChildRun(run.info.run_id, run.info.status, dict(run.data.metrics), dict(run.data.tags))
    return out


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
    """The child run of one grid cell: found by config hash (a resubmission continues it) or created."""
    existing = child_runs(uri, experiment_id, parent_run_id) if existing is None else existing
    if config_hash in existing:
        return existing[config_hash]
    client = MlflowClient(uri)
    all_tags = {**tags, "mlflow.parentRunId": parent_run_id, "config_hash": config_hash}
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    client.update_run(run.info.run_id, status="SCHEDULED")  # RUNNING once its job starts (MlflowTracker.start)
    params_list = _params(params)
    for i in range(0, len(params_list), 100):
        client.log_batch(run.info.run_id, params=params_list[i : i + 100])
    return ChildRun(run.info.run_id, "SCHEDULED", {}, all_tags)


@dataclass(frozen=True)
class NewChild:
    """One grid cell's child run to create: its config hash, name, params (the resolved config) and tags."""

    config_hash: str
    run_name: str
    params: dict[str, Any]
    tags: dict[str, str]


def ensure_child_runs(
    uri: str, experiment_id: str, parent_run_id: str, cells: list[NewChild], workers: int = 8
) -> dict[str, ChildRun]:
    """Every cell's child run by config hash: existing ones found (a resubmission continues them), the rest
    created SCHEDULED with their params.

    On a database store the runs are created by MLflow (``create_run``, with their tags) and then, in one
    transaction, set SCHEDULED and given their params: three round trips per run cost ~50 ms each, five
    seconds for a 100-run grid. A tracking server gets the per-run calls from a thread pool.
    """
    existing = child_runs(uri, experiment_id, parent_run_id)
    todo = [cell for cell in cells if cell.config_hash not in existing]
    if not todo:
        return existing
    client = MlflowClient(uri)

    def tags(cell: NewChild) -> dict[str, str]:
        return {**cell.tags, "mlflow.parentRunId": parent_run_id, "config_hash": cell.config_hash}

    if not uri.startswith(("sqlite:", "postgresql")):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            made = pool.map(
                lambda c: ensure_child_run(
                    uri, experiment_id, parent_run_id, c.config_hash, c.run_name, c.params, c.tags, existing
                ),
                todo,
            )
            return {**existing, **{cell.config_hash: child for cell, child in zip(todo, made, strict=True)}}
    created = {
        cell.config_hash: client.create_run(experiment_id, run_name=cell.run_name, tags=tags(cell)) for cell in todo
    }
    run_ids = [run.info.run_id for run in created.values()]
    rows = [
        {"key": p.key, "value": p.value, "run_uuid": created[cell.config_hash].info.run_id}
        for cell in todo
        for p in _params(cell.params)
    ]
    from experiments.server import driver_uri

    engine = sqlalchemy.create_engine(driver_uri(uri))
    try:
        with engine.begin() as conn:  # one transaction: every run SCHEDULED with its params, or none
            conn.execute(
                sqlalchemy.text("UPDATE runs SET status = 'SCHEDULED' WHERE run_uuid IN :ids").bindparams(
                    sqlalchemy.bindparam("ids", expanding=True)
                ),
                {"ids": run_ids},
            )
            if rows:
                conn.execute(
                    sqlalchemy.text("INSERT INTO params (key, value, run_uuid) VALUES (:key, :value, :run_uuid)"), rows
                )
    finally:
        engine.dispose()
    return {
        **existing,
        **{
            h: ChildRun(run.info.run_id, "SCHEDULED", {}, tags(c))
            for c, (h, run) in zip(todo, created.items(), strict=True)
        },
    }


def mark_run(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run as FINISHED / FAILED / KILLED, with the reason as a tag."""
    client = MlflowClient(uri)
    if reason:
        client.log_batch(run_id, tags=[RunTag("failure_reason", reason[:5000])])
    client.set_terminated(run_id, status)


TERMINAL = ("FINISHED", "FAILED", "KILLED")


def close_parent_if_done(uri: str, child_run_id: str) -> str | None:
    """End the sweep's parent run once none of its children is SCHEDULED or RUNNING: FINISHED when every child
    finished, FAILED otherwise. Each child calls this after ending itself, so the last one to end closes it.
    Returns the parent's new status, or None when children are still going."""
    client = MlflowClient(uri)
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


def reopen_parent(uri: str, parent_run_id: str) -> None:
    """A resubmission puts an ended parent run back to RUNNING (its children are about to run again)."""
    client = MlflowClient(uri)
    if client.get_run(parent_run_id).info.status in TERMINAL:
        client.update_run(parent_run_id, status="RUNNING")
