"""The MLflow store: URI resolution, reachability, and the sweep's parent/child runs (created before fan-out)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from experiments.errors import ExperimentsError

PARENT_ROLE = "parent"
MAX_PARAM_LENGTH = 6000


def default_tracking_uri(project_dir: Path) -> str:
    return f"sqlite:///{Path(project_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None, project_dir: Path | None = None) -> str:
    """Explicit argument > MLFLOW_TRACKING_URI > sqlite file in the project directory. Always explicit."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(project_dir or Path.cwd())
    if not uri.startswith(("sqlite:///", "http://", "https://", "postgresql://", "postgresql+psycopg2://")):
        raise ExperimentsError(
            f"tracking URI {uri!r}: use sqlite:///ABS/PATH.db, http(s)://HOST:PORT or postgresql://… "
            "(MLflow's file store is deprecated)"
        )
    if uri.startswith("postgresql://"):  # a bare scheme means psycopg 3 to SQLAlchemy ≥ 2.1; psycopg2 is installed
        from experiments.server import driver_uri

        uri = driver_uri(uri)
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the URI in the message, when the tracking store cannot be reached."""
    if uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///") :]).parent
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
        raise ExperimentsError(f"tracking URI {uri} does not answer: {reason}")
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout_s)})
        with engine.connect():
            pass
    except Exception as err:  # any driver error means: not reachable
        raise ExperimentsError(f"tracking URI {_redact(uri)} does not answer: {err.__class__.__name__}") from None


def _redact(uri: str) -> str:
    """Hide a password in a database URI."""
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, creating store and experiment once (call before fanning jobs out)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
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


def mark_run(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run as FINISHED / FAILED / KILLED, with the reason as a tag."""
    client = MlflowClient(uri)
    if reason:
        client.log_batch(run_id, tags=[RunTag("failure_reason", reason[:5000])])
    client.set_terminated(run_id, status)
