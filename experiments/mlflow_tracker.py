"""The engine's tracker interface on MLflow: batched, exactly-once across resume, spooled when the store is away."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric

from deeplab.lease import open_own
from deeplab.tracking import DatasetInput as RunDataset
from experiments.errors import ExperimentsError
from experiments.store import StoreGone, batches, is_database, open_client, params_of, tags_of
from experiments.system_metrics import PREFIX as SYSTEM_PREFIX
from experiments.system_metrics import SystemSampler

SPOOL_NAME = "mlflow-spool.jsonl"


class MlflowTracker:
    """Buffers metric points and sends them with ``log_batch`` (≤ ``max_batch`` per call) at ``flush``.

    On construction the run's history is read once: points at steps already stored are dropped, so iterations
    replayed after a resume are not duplicated. A send that fails goes to ``spool_dir/mlflow-spool.jsonl`` and
    training goes on; every later flush replays the spool first. A sqlite store that is missing or was replaced
    is never written (nor recreated): everything is spooled, status changes and tags included, for
    ``experiments sync`` to replay. With ``start_tags`` the run is marked RUNNING, with those tags, at the
    engine's first call (the engine calls once it holds the run directory's lease); a ``system`` sampler starts
    then too, and its samples join the points at every flush (steps continue the run's earlier ones). Points are
    also sent when ``flush_every_s`` has passed since the last send, so the UI follows a run between checkpoints.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        spool_dir: Path,
        max_batch: int = 1000,
        retry_interval_s: float = 60.0,
        start_tags: dict[str, str] | None = None,
        system: SystemSampler | None = None,
        flush_every_s: float = 60.0,
    ) -> None:
        if not is_database(tracking_uri):
            # a server that is away must not stall training: MLflow's default retries take minutes per call
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.uri, self.run_id = tracking_uri, run_id
        self.retry_interval_s = retry_interval_s
        self._failed_at = float("-inf")
        self.spool = Path(spool_dir) / SPOOL_NAME
        self.max_batch = max_batch
        self._buffer: list[Metric] = []
        self._outage = False
        self._start_tags = start_tags
        self._begun = False
        self.system, self.flush_every_s = system, flush_every_s
        self._flushed_at = time.monotonic()
        self._params: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        try:
            self.client = open_client(tracking_uri)
            run = self.client.get_run(run_id)
            self._params = dict(run.data.params)
            self._last_step = {key: self._max_step(key) for key in run.data.metrics}
        except StoreGone as err:  # train anyway; the points wait in the spool
            self.client = None
            self._warn(f"{err}; spooling to {self.spool}")
        for point in self._read_spool()[0]:
            self._last_step[point.key] = max(self._last_step.get(point.key, -1), point.step)
        # system samples are numbered as MLflow's monitor numbers them: on from the run's last one
        self._system_step = 1 + max((s for k, s in self._last_step.items() if k.startswith(SYSTEM_PREFIX)), default=-1)

    def _max_step(self, key: str) -> int:
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)

    def _begin(self) -> None:
        if self._begun:
            return
        self._begun = True
        if self._start_tags is not None:
            tags, self._start_tags = self._start_tags, None
            self._event({"status": "RUNNING"})
            self.set_tags(tags)
        if self.system is not None:
            self.system.start()

    def _store(self):
        """The client, after checking that a sqlite store is still the one this run lives in."""
        client = open_client(self.uri)
        return self.client or client

    def log_params(self, params: dict[str, Any]) -> None:
        self._begin()
        new = {}
        for p in params_of(params):
            if p.key in self._params:
                if self._params[p.key] != p.value:
                    raise ExperimentsError(
                        f"run {self.run_id}: param {p.key} is {self._params[p.key]!r}, not {p.value!r}"
                    )
                continue
            new[p.key] = self._params[p.key] = p.value
        if new:
            self._event({"params": new})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._begin()
        self._event({"tags": {t.key: t.value for t in tags_of(tags)}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._begin()
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if step > self._last_step.get(key, -1):
                self._buffer.append(Metric(key, float(value), now, int(step)))
                self._last_step[key] = step
        if len(self._buffer) >= self.max_batch or time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    def log_artifact(self, local_path: str | Path, artifact_path: str = "") -> None:
        self._begin()
        path = Path(local_path)
        try:
            client = self._store()
            if path.is_dir():
                client.log_artifacts(self.run_id, str(path), f"{artifact_path}/{path.name}".strip("/"))
            else:
                client.log_artifact(self.run_id, str(path), artifact_path or None)
        except StoreGone as err:
            self._warn(f"{err}; spooling to {self.spool} (artifacts stay in the run directory)")
        except Exception as err:  # artifacts stay in the run directory; the run goes on
            self._warn(f"artifact {path} not uploaded ({err.__class__.__name__}); it stays in the run directory")

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """MLflow's stepped image (the run page's image slider under ``key``); sent now, not spooled."""
        self._begin()
        try:
            self._store().log_image(self.run_id, image, key=key, step=step, synchronous=True)
        except Exception as err:  # the images are a view of the run, not its record: the run goes on
            self._warn(f"image {key} at step {step} not uploaded ({err.__class__.__name__})")

    def log_inputs(self, datasets: list[RunDataset]) -> None:
        self._begin()
        self._event({"inputs": [asdict(d) for d in datasets]})

    def _send(self, points: list[Metric], events: list[dict[str, Any]]) -> None:
        client = self._store()
        for m, _, _ in batches(points):
            for i in range(0, len(m), self.max_batch):
                client.log_batch(self.run_id, metrics=m[i : i + self.max_batch])
        for event in events:
            apply_event(client, self.run_id, event)

    def _event(self, event: dict[str, Any]) -> None:
        """A params / tags / status change: sent now (after any spooled points), or spooled during an outage."""
        self.flush(events=[event])

    def _take_system_samples(self) -> None:
        for timestamp, values in self.system.take() if self.system is not None else ():
            self._buffer += [Metric(k, v, timestamp, self._system_step) for k, v in values.items()]
            self._system_step += 1

    def flush(self, *, force: bool = False, events: list[dict[str, Any]] | None = None) -> None:
        """Send buffered (and spooled) points; during an outage, try the store at most every retry interval."""
        events = events or []
        self._take_system_samples()
        self._flushed_at = time.monotonic()
        if self._outage and not force and time.monotonic() - self._failed_at < self.retry_interval_s:
            self._append_spool(self._buffer, events)
            self._buffer = []
            return
        spooled, spooled_events = self._read_spool()
        points = spooled + self._buffer
        if not points and not events and not spooled_events:
            return
        try:
            self._send(points, spooled_events + events)
        except Exception as err:  # the store is away: keep everything on disk and go on training
            self._append_spool(self._buffer, events)
            self._buffer = []
            self._failed_at = time.monotonic()
            reason = (
                str(err) if isinstance(err, StoreGone) else f"tracking store unreachable ({err.__class__.__name__})"
            )
            self._warn(f"{reason}; {len(points)} points spooled to {self.spool}")
            return
        self._buffer = []
        if spooled or spooled_events:
            self.spool.unlink(missing_ok=True)
        if self._outage:
            self._outage = False
            print(f"tracking: store back; {len(spooled)} spooled points replayed", file=sys.stderr, flush=True)

    def _warn(self, message: str) -> None:
        if not self._outage:
            print(f"tracking: {message}", file=sys.stderr, flush=True)
        self._outage = True

    def _append_spool(self, points: list[Metric], events: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open_own(self.spool, "a") as fh:
            for p in points:
                fh.write(json.dumps({"key": p.key, "value": p.value, "timestamp": p.timestamp, "step": p.step}) + "\n")
            for event in events:
                fh.write(json.dumps({"event": event}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _read_spool(self) -> tuple[list[Metric], list[dict[str, Any]]]:
        if not self.spool.exists():
            return [], []
        points, events = [], []
        with open_own(self.spool, "r") as fh:
            text = fh.read()
        for line in text.splitlines():
            try:
                p = json.loads(line)
            except json.JSONDecodeError:  # torn last line after a kill
                continue
            if "event" in p:
                events.append(p["event"])
            else:
                points.append(Metric(p["key"], p["value"], p["timestamp"], p["step"]))
        return points, events

    def start(self) -> None:
        """Mark the run RUNNING (again, after a requeue)."""
        self._event({"status": "RUNNING"})

    def close(self, status: str | None, reason: str | None = None) -> None:
        """Flush (one more try at the store); then set the final status (with ``reason`` as ``failure_reason``),
        or leave it RUNNING when None."""
        if status is not None:
            self._begin()
        if self.system is not None:
            self.system.stop()
        events = [] if status is None else [{"status": status, **({"reason": reason} if reason else {})}]
        self.flush(force=True, events=events)
        if self.spool.exists():
            print(
                f"tracking: {self.spool} holds points not yet sent; "
                "they are sent when the run resumes, or by `experiments sync SPEC`",
                file=sys.stderr,
                flush=True,
            )


def apply_event(client: Any, run_id: str, event: dict[str, Any]) -> None:
    """Apply one spooled params / tags / status change to the run."""
    if "params" in event:
        for _, p, _ in batches(params=params_of(event["params"])):
            client.log_batch(run_id, params=p)
    if "tags" in event:
        for _, _, t in batches(tags=tags_of(event["tags"])):
            client.log_batch(run_id, tags=t)
    if "inputs" in event:
        client.log_inputs(run_id, datasets=[dataset_input(RunDataset(**d)) for d in event["inputs"]])
    if "status" in event:
        if event.get("reason"):
            client.log_batch(run_id, tags=tags_of({"failure_reason": event["reason"]}))
        if event["status"] in ("FINISHED", "FAILED", "KILLED"):
            client.set_terminated(run_id, event["status"])
        else:
            client.update_run(run_id, status=event["status"])


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
