"""The engine's tracker for sweep jobs: the run record first (the run directory), then MLflow mirrors it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deeplab.tracking import PARAMS_FILE, JsonlTracker, read_record_json, write_status
from deeplab.tracking import DatasetInput as RunDataset
from experiments.errors import ExperimentsError
from experiments.store import is_database
from experiments.store.mirror import mirror_run, read_run_id, write_run_id
from experiments.system_metrics import PREFIX as SYSTEM_PREFIX
from experiments.system_metrics import SystemSampler


class MlflowTracker(JsonlTracker):
    """Writes everything into the run directory's record (``deeplab.tracking.JsonlTracker``) and mirrors the
    record into the MLflow run ``run_id`` as it goes (``experiments.store.mirror``): at every status, params or
    tags change, at every flush (before each checkpoint) and when ``flush_every_s`` has passed since the last
    mirror, so the UI follows the run. A store that is away (or a run deleted in the UI) never stops training:
    the record keeps everything, the tracker says so once on stderr and tries again every ``retry_interval_s``;
    ``experiments sync SPEC`` (or the next mirror) sends it. With ``start_tags`` the run is marked RUNNING,
    with those tags, at the engine's first call (made once it holds the run directory's lease); a ``system``
    sampler starts then too, and its samples join the points at every flush.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        run_dir: Path,
        retry_interval_s: float = 60.0,
        start_tags: dict[str, str] | None = None,
        system: SystemSampler | None = None,
        flush_every_s: float = 60.0,
    ) -> None:
        super().__init__(run_dir)
        if not is_database(tracking_uri):
            # a server that is away must not stall training: MLflow's default retries take minutes per call
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.uri, self.run_id = tracking_uri, run_id
        self.retry_interval_s, self.flush_every_s = retry_interval_s, flush_every_s
        self.system = system
        self._start_tags = start_tags
        self._begun = False
        self._outage = False
        self._failed_at = float("-inf")
        self._mirrored_at = time.monotonic()
        self._system_step: int | None = None

    def _begin(self) -> None:
        if self._begun:
            return
        self._begun = True
        if read_run_id(self.run_dir) != self.run_id:  # a run dir made before the record named its MLflow run
            write_run_id(self.run_dir, self.run_id, self.uri)
        if self._start_tags is not None:
            tags, self._start_tags = self._start_tags, None
            super().set_tags({k: v for k, v in tags.items() if v is not None})
            write_status(self.run_dir, "RUNNING")
            self._mirror(force=True)
        if self.system is not None:
            self.system.start()

    def log_params(self, params: dict[str, Any]) -> None:
        self._begin()
        recorded = read_record_json(self.run_dir, PARAMS_FILE)
        for key, value in params.items():
            if key in recorded and str(recorded[key]) != str(value):
                raise ExperimentsError(f"{self.run_dir / PARAMS_FILE}: param {key} is {recorded[key]!r}, not {value!r}")
        super().log_params(params)
        self._mirror(force=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._begin()
        super().set_tags(tags)
        self._mirror(force=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._begin()
        super().log_metrics(metrics, step)
        if time.monotonic() - self._mirrored_at >= self.flush_every_s:
            self.flush()

    def log_artifact(self, local_path: str | Path, artifact_path: str = "") -> None:
        self._begin()
        super().log_artifact(local_path, artifact_path)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self._begin()
        super().log_image(image, key, step)

    def log_inputs(self, datasets: list[RunDataset]) -> None:
        self._begin()
        super().log_inputs(datasets)
        self._mirror(force=True)

    def _take_system_samples(self) -> None:
        samples = self.system.take() if self.system is not None else ()
        if samples and self._system_step is None:  # numbered as MLflow's monitor numbers them: on from the last
            steps = [s for k, s in self._steps().items() if k.startswith(SYSTEM_PREFIX)]
            self._system_step = 1 + max(steps, default=-1)
        for _timestamp, values in samples:
            super().log_metrics(values, self._system_step)
            self._system_step += 1

    def flush(self) -> None:
        """The record first (durable before a checkpoint), then the mirror."""
        self._take_system_samples()
        super().flush()
        self._mirror()

    def _mirror(self, *, force: bool = False) -> None:
        """Mirror the record; a failure is said once and retried later, never raised into training."""
        self._mirrored_at = time.monotonic()
        if self._outage and not force and time.monotonic() - self._failed_at < self.retry_interval_s:
            return
        try:
            mirror_run(self.uri, self.run_dir)
        except Exception as err:  # the record holds everything: training goes on
            self._failed_at = time.monotonic()
            reason = (
                str(err)
                if isinstance(err, ExperimentsError)
                else f"tracking store unreachable ({err.__class__.__name__})"
            )
            if not self._outage:
                print(f"tracking: {reason}; the run directory keeps everything", file=sys.stderr, flush=True)
            self._outage = True
            return
        if self._outage:
            self._outage = False
            print("tracking: store back; the run directory is mirrored again", file=sys.stderr, flush=True)

    def close(self, status: str | None, reason: str | None = None) -> None:
        """Record and mirror the final status (with ``reason`` as ``failure_reason``), or leave it RUNNING when
        None."""
        if status is not None:
            self._begin()
        if self.system is not None:
            self.system.stop()
        self._take_system_samples()
        super().close(status, reason)
        self._mirror(force=True)
        if self._outage:
            print(
                f"tracking: {self.run_dir} holds what MLflow does not show yet; "
                "`experiments sync SPEC` mirrors it (so does the run when it resumes)",
                file=sys.stderr,
                flush=True,
            )
