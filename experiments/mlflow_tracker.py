"""The engine's tracker interface on MLflow: batched, exactly-once across resume, spooled when the server is away."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from experiments.errors import ExperimentsError
from experiments.store import MAX_PARAM_LENGTH

SPOOL_NAME = "mlflow-spool.jsonl"


class MlflowTracker:
    """Buffers metric points and sends them with ``log_batch`` (≤ ``max_batch`` per call) at ``flush``.

    On construction the run's history is read once: points at steps already stored are dropped, so iterations
    replayed after a resume are not duplicated. A send that fails goes to ``spool_dir/mlflow-spool.jsonl`` and
    training goes on; every later flush replays the spool first.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        spool_dir: Path,
        max_batch: int = 1000,
        retry_interval_s: float = 60.0,
    ) -> None:
        if tracking_uri.startswith(("http://", "https://")):
            # a server that is away must not stall training: MLflow's default retries take minutes per call
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.client = MlflowClient(tracking_uri)
        self.retry_interval_s = retry_interval_s
        self._failed_at = float("-inf")
        self.run_id = run_id
        self.spool = Path(spool_dir) / SPOOL_NAME
        self.max_batch = max_batch
        self._buffer: list[Metric] = []
        self._outage = False
        run = self.client.get_run(run_id)
        self._params = dict(run.data.params)
        self._last_step = {key: self._max_step(key) for key in run.data.metrics}
        for point in self._read_spool():
            self._last_step[point.key] = max(self._last_step.get(point.key, -1), point.step)

    def _max_step(self, key: str) -> int:
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)

    def log_params(self, params: dict[str, Any]) -> None:
        new = []
        for key, value in params.items():
            text = str(value)[:MAX_PARAM_LENGTH]
            if key in self._params:
                if self._params[key] != text:
                    raise ExperimentsError(f"run {self.run_id}: param {key} is {self._params[key]!r}, not {text!r}")
                continue
            new.append(Param(key, text))
            self._params[key] = text
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if step > self._last_step.get(key, -1):
                self._buffer.append(Metric(key, float(value), now, int(step)))
                self._last_step[key] = step
        if len(self._buffer) >= self.max_batch:
            self.flush()

    def log_artifact(self, local_path: str | Path, artifact_path: str = "") -> None:
        path = Path(local_path)
        try:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), f"{artifact_path}/{path.name}".strip("/"))
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path or None)
        except Exception as err:  # artifacts stay in the run directory; the run goes on
            self._warn(f"artifact {path} not uploaded ({err.__class__.__name__}); it stays in the run directory")

    def _send(self, points: list[Metric]) -> None:
        for i in range(0, len(points), self.max_batch):
            self.client.log_batch(self.run_id, metrics=points[i : i + self.max_batch])

    def flush(self, *, force: bool = False) -> None:
        """Send buffered (and spooled) points; during an outage, try the server at most every retry interval."""
        if self._outage and not force and time.monotonic() - self._failed_at < self.retry_interval_s:
            self._append_spool(self._buffer)
            self._buffer = []
            return
        spooled = self._read_spool()
        points = spooled + self._buffer
        if not points:
            return
        try:
            self._send(points)
        except Exception as err:  # the server is away: keep the points on disk and go on training
            self._append_spool(self._buffer)
            self._buffer = []
            self._failed_at = time.monotonic()
            self._warn(f"tracking server unreachable ({err.__class__.__name__}); {len(points)} points spooled")
            return
        self._buffer = []
        if spooled:
            self.spool.unlink(missing_ok=True)
        if self._outage:
            self._outage = False
            print(f"tracking: server back; {len(spooled)} spooled points replayed", file=sys.stderr, flush=True)

    def _warn(self, message: str) -> None:
        if not self._outage:
            print(f"tracking: {message}", file=sys.stderr, flush=True)
        self._outage = True

    def _append_spool(self, points: list[Metric]) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a") as fh:
            for p in points:
                fh.write(json.dumps({"key": p.key, "value": p.value, "timestamp": p.timestamp, "step": p.step}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _read_spool(self) -> list[Metric]:
        if not self.spool.exists():
            return []
        points = []
        for line in self.spool.read_text().splitlines():
            try:
                p = json.loads(line)
            except json.JSONDecodeError:  # torn last line after a kill
                continue
            points.append(Metric(p["key"], p["value"], p["timestamp"], p["step"]))
        return points

    def start(self) -> None:
        """Mark the run RUNNING (again, after a requeue)."""
        self.client.update_run(self.run_id, status="RUNNING")

    def close(self, status: str | None) -> None:
        """Flush (one more try at the server); then set the final status, or leave it RUNNING when None."""
        self.flush(force=True)
        if self.spool.exists():
            print(
                f"tracking: {self.spool} holds points not yet sent; "
                "they are sent when the run resumes, or by `experiments sync SPEC`",
                file=sys.stderr,
                flush=True,
            )
        if status is None:
            return
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as err:
            self._warn(f"could not mark run {self.run_id} {status} ({err.__class__.__name__})")
