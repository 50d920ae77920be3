"""A run directory's record mirrored into its MLflow run: idempotent, safe at any time and from several processes.

The record (``deeplab.tracking``: metrics.jsonl, params.json, tags.json, inputs.json, status.json, artifacts/,
images/) is the run's truth; MLflow shows it. ``mirror_run`` sends what the MLflow run lacks: points by key and
step, params and tags by key (a tag recorded as null is deleted), dataset inputs by digest, artifacts by path,
images by key and step, and the status. ``run.json`` names the MLflow run (and the store) the record mirrors into;
``.mirror.json`` remembers how far it got, so a call sends only what is new. Without it (a lost cursor, another
store) the run's history is read once and nothing already there is sent twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from PIL import Image

from deeplab.tracking import (
    ARTIFACTS_DIR,
    IMAGES_DIR,
    INPUTS_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    STATUS_FILE,
    TAGS_FILE,
    JsonlTracker,
    complete_lines,
    read_record_json,
    write_record_json,
    write_status,
)
from deeplab.tracking import DatasetInput as RunDataset
from experiments.errors import ExperimentsError
from experiments.store.client import open_client
from experiments.store.uri import redact
from experiments.store.write import TERMINAL, batches, params_of, tags_of

RUN_FILE = "run.json"  # {"run_id": the MLflow run, "store": the redacted URI it lives in}
CURSOR_FILE = ".mirror.json"
LOCK_FILE = ".mirror.lock"
RECORD_LOCK = ".record.lock"  # records several processes write (the parent's)
PARENT_DIR = "parent"  # runs_root/<sweep>/parent: the sweep's parent run's record
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
MAX_BATCH = 1000


class RunGone(ExperimentsError):
    """The MLflow run (or its experiment) a record mirrors into was deleted, or is not in this store."""


@dataclass
class Mirrored:
    run_id: str
    points: int = 0
    params: int = 0
    tags: int = 0
    artifacts: int = 0
    images: int = 0
    status: str | None = None  # the status set in MLflow, when it changed

    @property
    def sent(self) -> int:
        return self.points + self.params + self.tags + self.artifacts + self.images + (self.status is not None)


def read_run_id(run_dir: Path) -> str | None:
    """The MLflow run a run directory mirrors into, or None."""
    return read_record_json(run_dir, RUN_FILE).get("run_id") or None


def write_run_id(run_dir: Path, run_id: str, uri: str) -> None:
    write_record_json(run_dir, RUN_FILE, {"run_id": run_id, "store": redact(uri), "created": time.time()})


@contextmanager
def _locked(run_dir: Path, name: str = LOCK_FILE) -> Iterator[None]:
    """One mirror of a run directory at a time (the job's, status', sync's): they would send a point twice."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def gone_line(run_dir: Path, run_id: str, uri: str, *, deleted: str | None) -> str:
    """The one line for a record whose MLflow run is deleted or absent, with the way back."""
    where = redact(uri)
    if deleted == "run":
        way = f"restore it (`mlflow runs restore --run-id {run_id}`), then `experiments sync SPEC`"
        return f"{run_dir}: its MLflow run {run_id} was deleted in {where}; {way}"
    if deleted is not None:
        way = f"restore it (`mlflow experiments restore --experiment-id {deleted}`), then `experiments sync SPEC`"
        return f"{run_dir}: the MLflow experiment {deleted} of run {run_id} was deleted in {where}; {way}"
    way = "`experiments sync SPEC --rebuild` makes the runs again from the run directories"
    return f"{run_dir}: {where} holds no MLflow run {run_id} (another or a lost store?): {way}"


def check_run(client: Any, run_id: str, run_dir: Path, uri: str) -> Any:
    """The MLflow run, active in an active experiment; else RunGone naming the way back."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RunGone(gone_line(run_dir, run_id, uri, deleted=None)) from None
    if run.info.lifecycle_stage == "deleted":
        raise RunGone(gone_line(run_dir, run_id, uri, deleted="run"))
    if client.get_experiment(run.info.experiment_id).lifecycle_stage == "deleted":
        raise RunGone(gone_line(run_dir, run_id, uri, deleted=run.info.experiment_id))
    return run


def gone_reason(uri: str, run_dir: Path) -> str | None:
    """Why the MLflow run a run directory records cannot be mirrored into (deleted, or not in this store), or
    None when it can (or the directory records none)."""
    run_id = read_run_id(run_dir)
    if run_id is None:
        return None
    try:
        check_run(open_client(uri), run_id, run_dir, uri)
    except RunGone as err:
        return str(err)
    return None


def mirror_run(uri: str, run_dir: Path, *, experiment_id: str | None = None, rebuild: bool = False) -> Mirrored:
    """Send what the MLflow run of ``run_dir`` lacks. With ``experiment_id`` a record that names no MLflow run yet
    (a sweep's new run) gets one there; with ``rebuild`` too, so does a record whose run this store does not
    hold, or holds deleted (a lost store made again). Otherwise a run that is gone is ``RunGone``."""
    run_dir = Path(run_dir)
    client = open_client(uri)
    with _locked(run_dir):
        run_id = read_run_id(run_dir)
        if experiment_id is not None and (run_id is None or (rebuild and not _active(client, run_id))):
            run_id = _create(client, uri, run_dir, experiment_id)
        if run_id is None:
            raise RunGone(f"{run_dir}: no MLflow run recorded ({RUN_FILE}); `experiments sync SPEC --rebuild`")
        run = check_run(client, run_id, run_dir, uri)
        cursor = read_record_json(run_dir, CURSOR_FILE)
        if cursor.get("run_id") != run_id:  # another store's run, or never mirrored: start over, deduplicated
            cursor = {"run_id": run_id}
        done = Mirrored(run_id)
        _params(client, run, run_dir, done)
        _tags(client, run, run_dir, done)
        _inputs(client, run, run_dir)
        _points(client, run, run_dir, cursor, done)
        _images(client, run_id, run_dir, cursor, done)
        _artifacts(client, run_id, run_dir, cursor, done)
        _status(client, run, run_dir, done)
        write_record_json(run_dir, CURSOR_FILE, cursor)
    return done


def _active(client: Any, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _create(client: Any, uri: str, run_dir: Path, experiment_id: str) -> str:
    tags = read_record_json(run_dir, TAGS_FILE)
    created = read_record_json(run_dir, RUN_FILE).get("created")
    run = client.create_run(
        experiment_id,
        start_time=int(created * 1000) if created else None,
        run_name=tags.get(RUN_NAME_TAG),
        tags={t.key: t.value for t in tags_of(tags)},
    )
    write_record_json(run_dir, RUN_FILE, {"run_id": run.info.run_id, "store": redact(uri), "created": created
                                          or time.time()})  # fmt: skip
    write_record_json(run_dir, CURSOR_FILE, {"run_id": run.info.run_id})
    return run.info.run_id


def _params(client: Any, run: Any, run_dir: Path, done: Mirrored) -> None:
    stored, recorded = run.data.params, params_of(read_record_json(run_dir, PARAMS_FILE))
    new = [p for p in recorded if p.key not in stored]
    for p in recorded:
        if p.key in stored and stored[p.key] != p.value:
            raise ExperimentsError(
                f"{run_dir / PARAMS_FILE}: param {p.key} is {p.value!r}, MLflow run {run.info.run_id} has "
                f"{stored[p.key]!r} (params never change: is this run dir another run's?)"
            )
    for _, chunk, _ in batches(params=new):
        client.log_batch(run.info.run_id, params=chunk)
    done.params = len(new)


def _tags(client: Any, run: Any, run_dir: Path, done: Mirrored) -> None:
    recorded = read_record_json(run_dir, TAGS_FILE)
    if run_dir.name != PARENT_DIR and (parent_id := read_run_id(run_dir.parent / PARENT_DIR)):
        recorded[PARENT_TAG] = parent_id
    stored = run.data.tags
    new = [t for t in tags_of({k: v for k, v in recorded.items() if v is not None}) if stored.get(t.key) != t.value]
    for _, _, chunk in batches(tags=new):
        client.log_batch(run.info.run_id, tags=chunk)
    gone = [k for k, v in recorded.items() if v is None and k in stored]
    for key in gone:
        client.delete_tag(run.info.run_id, key)
    done.tags = len(new) + len(gone)


def _inputs(client: Any, run: Any, run_dir: Path) -> None:
    have = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs} if run.inputs else set()
    new = [RunDataset(**d) for d in read_record_json(run_dir, INPUTS_FILE).values()]
    new = [d for d in new if (d.name, d.digest) not in have]
    if new:
        client.log_inputs(run.info.run_id, datasets=[dataset_input(d) for d in new])


def _points(client: Any, run: Any, run_dir: Path, cursor: dict[str, Any], done: Mirrored) -> None:
    """Points after the cursor's offset. An offset marked pending (a send that may or may not have landed) or
    missing is checked against the run's history, so no (key, step) is sent twice."""
    start = int(cursor.get("offset", 0))
    lines, end = complete_lines(run_dir / METRICS_FILE, start)
    if not lines:
        return
    points = [json.loads(line) for line in lines]
    if cursor.get("pending") or "offset" not in cursor:
        stored = _stored_steps(client, run, {p["key"] for p in points})
        points = [p for p in points if p["step"] not in stored.get(p["key"], ())]
    now = int(time.time() * 1000)
    metrics = [Metric(p["key"], float(p["value"]), int(p.get("timestamp", now)), int(p["step"])) for p in points]
    cursor["pending"] = True
    write_record_json(run_dir, CURSOR_FILE, cursor)
    for i in range(0, len(metrics), MAX_BATCH):
        client.log_batch(run.info.run_id, metrics=metrics[i : i + MAX_BATCH])
    cursor["offset"], cursor["pending"] = end, False
    done.points = len(metrics)


def _stored_steps(client: Any, run: Any, keys: set[str]) -> dict[str, set[int]]:
    return {k: {m.step for m in client.get_metric_history(run.info.run_id, k)} for k in keys if k in run.data.metrics}


def _images(client: Any, run_id: str, run_dir: Path, cursor: dict[str, Any], done: Mirrored) -> None:
    """Stepped images (MLflow's slider): one upload per key and step."""
    root = run_dir / IMAGES_DIR
    if not root.is_dir():
        return
    sent = set(cursor.get("images", []))
    files = [p for p in sorted(root.rglob("*.png")) if not p.name.startswith(".")]
    todo = [p for p in files if str(p.relative_to(root)) not in sent]
    if todo and "images" not in cursor:  # a lost cursor: the store may hold some already
        names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "images")}
        todo = [p for p in todo if not any(n.startswith(_image_prefix(p, root)) for n in names)]
    for path in todo:
        key, step = str(path.parent.relative_to(root)), int(path.stem)
        client.log_image(run_id, np.asarray(Image.open(path).convert("RGB")), key=key, step=step, synchronous=True)
        sent.add(str(path.relative_to(root)))
        done.images += 1
    cursor["images"] = sorted(sent | {str(p.relative_to(root)) for p in files})


def _image_prefix(path: Path, root: Path) -> str:
    return f"{str(path.parent.relative_to(root)).replace('/', '~')}+step+{int(path.stem)}+"


def _artifacts(client: Any, run_id: str, run_dir: Path, cursor: dict[str, Any], done: Mirrored) -> None:
    """Files under artifacts/ whose size or mtime changed since they were sent; the same path is replaced."""
    root = run_dir / ARTIFACTS_DIR
    if not root.is_dir():
        return
    sent: dict[str, list[int]] = cursor.get("artifacts", {})
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = str(path.relative_to(root))
        stat = path.stat()
        if sent.get(rel) == [stat.st_size, stat.st_mtime_ns]:
            continue
        folder = str(path.parent.relative_to(root))
        client.log_artifact(run_id, str(path), None if folder == "." else folder)
        sent[rel] = [stat.st_size, stat.st_mtime_ns]
        done.artifacts += 1
    cursor["artifacts"] = sent


def _status(client: Any, run: Any, run_dir: Path, done: Mirrored) -> None:
    record = read_record_json(run_dir, STATUS_FILE)
    status = record.get("status")
    if status is None or status == run.info.status:
        return
    if status in TERMINAL:
        client.set_terminated(run.info.run_id, status, end_time=int(1000 * record.get("time", time.time())))
    else:
        client.update_run(run.info.run_id, status=status)
    done.status = status


def start_record(run_dir: Path, *, tags: dict[str, Any], params: dict[str, Any] | None = None,
               status: str | None = None) -> None:  # fmt: skip
    """Write a new run's first record (its tags, params and status), keeping whatever the record holds already."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_record_json(run_dir, TAGS_FILE, {**tags, **read_record_json(run_dir, TAGS_FILE)})
    if params:
        write_record_json(run_dir, PARAMS_FILE, {**params, **read_record_json(run_dir, PARAMS_FILE)})
    if status and not (run_dir / STATUS_FILE).exists():
        write_record_json(run_dir, STATUS_FILE, {"status": status, "reason": None, "time": time.time()})


def dataset_input(dataset: RunDataset) -> DatasetInput:
    """The engine's dataset record as MLflow's dataset input (a local source; context as MLflow's tag)."""
    record = Dataset(
        name=dataset.name,
        digest=dataset.digest,
        source_type="local",
        source=json.dumps({"uri": dataset.source}),
        profile=json.dumps(dataset.profile),
    )
    return DatasetInput(record, tags=[InputTag("mlflow.data.context", dataset.context)])


def append_points(run_dir: Path, metrics: dict[str, float], step: int | None = None) -> None:
    """Add points to a record that several processes write (a sweep's parent): a (key, step) once. Without a
    step: Unix seconds, or one past the keys' last step when that is later (two writers in one second)."""
    with _locked(run_dir, RECORD_LOCK):
        tracker = JsonlTracker(run_dir)
        if step is None:
            last = tracker._steps()
            step = max([int(time.time()), *(last.get(k, -1) + 1 for k in metrics)])
        tracker.log_metrics(metrics, step)
        tracker.flush()


def update_record(run_dir: Path, name: str, values: dict[str, Any]) -> None:
    """Merge values into one of a shared record's JSON files (tags.json, params.json) under its lock."""
    with _locked(run_dir, RECORD_LOCK):
        write_record_json(run_dir, name, {**read_record_json(run_dir, name), **values})


def set_run_status(uri: str, run_dir: Path, status: str, reason: str | None = None) -> Mirrored:
    """Record a status change in the run directory, then mirror it."""
    write_status(run_dir, status, reason)
    return mirror_run(uri, run_dir)


def tag_run(uri: str, run_dir: Path, tags: dict[str, str | None]) -> Mirrored:
    """Record tags (None deletes one), then mirror them."""
    update_record(run_dir, TAGS_FILE, tags)
    return mirror_run(uri, run_dir)
