"""Writing to a store through MLflow's client: batches within MLflow's limits, tags, states, idempotent runs."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mlflow.entities import Metric, Param, RunTag

from experiments.errors import ExperimentsError
from experiments.store.client import open_client, store_lock
from experiments.store.uri import redact, sqlite_path
from experiments.store.views import experiment_view_tags

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_TAG_LENGTH = 5000
TERMINAL = ("FINISHED", "FAILED", "KILLED")
RECORD_KEY = "record.key"
_KEY = re.compile(r"^[A-Za-z0-9._:@/+-]{1,200}$")


def params_of(params: dict[str, Any]) -> list[Param]:
    """Params as MLflow takes them: text, cut to MLflow's length limit."""
    return [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]


def tags_of(tags: dict[str, Any]) -> list[RunTag]:
    """Tags as text; empty ones are dropped (a tag says something or is not set)."""
    return [RunTag(str(k), str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items() if v is not None and str(v) != ""]


def batches(
    metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
) -> Iterator[tuple[list[Metric], list[Param], list[RunTag]]]:
    """``log_batch`` arguments within MLflow's limits: ≤ 1000 metrics, ≤ 100 params, ≤ 100 tags, ≤ 1000 in all."""
    m, p, t = list(metrics), list(params), list(tags)
    while m or p or t:
        tp, tt = p[:100], t[:100]
        tm = m[: 1000 - len(tp) - len(tt)]
        yield tm, tp, tt
        m, p, t = m[len(tm) :], p[len(tp) :], t[len(tt) :]


def point(key: str, value: float, step: int) -> Metric:
    """One metric point, stamped now."""
    return Metric(key, float(value), int(time.time() * 1000), int(step))


def log(uri: str, run_id: str, *, metrics: Sequence[Metric] = (), params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Log metrics, params and tags to a run in as few ``log_batch`` calls as MLflow allows."""
    client = open_client(uri)
    for m, p, t in batches(metrics, params_of(params or {}), tags_of(tags or {})):
        client.log_batch(run_id, metrics=m, params=p, tags=t)


def log_artifact(uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Upload a file, or a directory's files, into the run's artifacts (under ``artifact_path``)."""
    client, path = open_client(uri), Path(path)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


def set_status(uri: str, run_id: str, status: str) -> None:
    """SCHEDULED / RUNNING, or an end state (FINISHED / FAILED / KILLED, with its end time)."""
    client = open_client(uri)
    if status in TERMINAL:
        client.set_terminated(run_id, status)
    else:
        client.update_run(run_id, status=status)


def mark_run(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run as FINISHED / FAILED / KILLED, with the reason as a tag."""
    if reason:
        log(uri, run_id, tags={"failure_reason": reason})
    set_status(uri, run_id, status)


def run_tags(uri: str, run_id: str) -> dict[str, str]:
    return dict(open_client(uri).get_run(run_id).data.tags)


def set_tags(uri: str, run_id: str, tags: dict[str, str | None]) -> None:
    """Set tags; a None value deletes the tag (absent already: nothing to do)."""
    client = open_client(uri)
    if kept := {k: v for k, v in tags.items() if v is not None}:
        log(uri, run_id, tags=kept)
    for key in (k for k, v in tags.items() if v is None):
        if key in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, key)


def run_status(uri: str, run_id: str) -> str:
    return open_client(uri).get_run(run_id).info.status


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, creating store and experiment once (call before fanning jobs out).

    A new experiment of a sqlite store keeps its artifacts beside the database (``mlartifacts/``), not in MLflow's
    default ``./mlruns`` of whichever directory the first submission happened to start in. It is made with the tags
    that open it in MLflow's runs view, with the preset columns (views.py)."""
    client = open_client(uri, create=True)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ExperimentsError(deleted_experiment_line(uri, name, experiment.experiment_id))
    if experiment is not None:
        return experiment.experiment_id
    if artifact_location is None and (db := sqlite_path(uri)) is not None:
        artifact_location = (db.resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=experiment_view_tags())
    except Exception:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def deleted_experiment_line(uri: str, name: str, experiment_id: str) -> str:
    return (
        f"MLflow experiment {name!r} (id {experiment_id}) is deleted in {redact(uri)}: restore it with its runs "
        f"(`mlflow experiments restore --experiment-id {experiment_id}`), or rebuild into another store "
        "(`experiments sync SPEC --rebuild --tracking-uri NEW`)"
    )


def find_experiment(uri: str, name: str) -> str | None:
    """The id of an existing experiment, else None (nothing is created)."""
    found = open_client(uri).get_experiment_by_name(name)
    return found.experiment_id if found is not None else None


def search(uri: str, experiment_id: str, filter_string: str = "") -> list:
    """Every active run of the experiment matching the filter (all pages)."""
    client, runs, token = open_client(uri), [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def quoted(value: str) -> str:
    """A value for a search filter: MLflow's filter strings have no escape for quotes."""
    if "'" in value:
        raise ExperimentsError(f"{value!r}: quotes cannot be searched for in MLflow")
    return f"'{value}'"


@contextlib.contextmanager
def _serialised(uri: str) -> Iterator[None]:
    """Find-or-create under the store's lock on sqlite (elsewhere MLflow offers no lock)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    with store_lock(db.absolute()):
        yield


class Recorded(NamedTuple):
    run_id: str
    created: bool  # False: a run of this key existed (it was brought up to date)


def record_run(
    uri: str,
    experiment: str,
    *,
    key: str,
    run_name: str,
    tags: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    metrics: Sequence[tuple[str, float, int]] = (),
    status: str = "FINISHED",
) -> Recorded:
    """One run per ``key`` (a tag): created the first time, brought up to date after that (missing params and
    metric points added, tags and status set), so recording the same thing twice leaves one run as it was.

    A run this call created and could not finish is deleted (no half-written run); on sqlite the whole record is
    made under the store's lock, so concurrent records of one key give one run."""
    if not _KEY.match(key):
        raise ExperimentsError(f"record key {key!r}: use letters, digits and . _ : @ / + - (≤ 200)")
    eid = ensure_experiment(uri, experiment)
    client = open_client(uri)
    with _serialised(uri):
        found = search(uri, eid, f"tags.`{RECORD_KEY}` = {quoted(key)}")
        run = found[0] if found else client.create_run(eid, run_name=run_name, tags={RECORD_KEY: key})
        run_id = run.info.run_id
        try:
            _bring_up_to_date(uri, client, run, bool(found), tags, params, metrics, status)
        except BaseException:
            if not found:
                client.delete_run(run_id)
            raise
    return Recorded(run_id, not found)


def _bring_up_to_date(
    uri: str,
    client: Any,
    run: Any,
    existed: bool,
    tags: dict[str, Any] | None,
    params: dict[str, Any] | None,
    metrics: Sequence[tuple[str, float, int]],
    status: str,
) -> None:
    run_id = run.info.run_id
    known = dict(run.data.params) if existed else {}
    clash = [p.key for p in params_of(params or {}) if p.key in known and known[p.key] != p.value]
    if clash:
        raise ExperimentsError(f"run {run_id}: param {clash[0]} is already {known[clash[0]]!r}")
    stored = (
        {k: {m.step for m in client.get_metric_history(run_id, k)} for k in {m[0] for m in metrics}} if existed else {}
    )
    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, int(s)) for k, v, s in metrics if int(s) not in stored.get(k, set())]
    fresh = {k: v for k, v in (params or {}).items() if str(k) not in known}
    log(uri, run_id, metrics=points, params=fresh, tags=tags)
    set_status(uri, run_id, status)
