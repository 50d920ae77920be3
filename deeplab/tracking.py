"""The engine's only window on the outside world: a small tracker interface.

``deeplab/`` never imports mlflow; ``experiments/`` adapts this interface to MLflow. Metric names below are
fixed: the analysis reads them back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from deeplab.errors import DeeplabError
from deeplab.lease import check_own, open_own

# Metric names (flat, namespaced, step = iteration). mIoU and IoU are in points (0-100), as the published tables
# print them, everywhere a person reads them: the MLflow UI, metrics.jsonl, the class tables, the report.
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
ITER_TIME = "time/iter_s"
# Where an iteration's time goes, per log window (rank 0's view; means per iteration): waiting for the next batch
# (a starved GPU shows here), and the rest of the iteration (the step, host to device copy included, up to the
# iteration's one host sync). Peak memory: CUDA's max_memory_allocated over the window in GiB; on CPU the process's
# peak RSS since it started (Linux cannot reset it per window).
DATA_TIME = "train/data_time_s"
STEP_TIME = "train/step_time_s"
PEAK_MEMORY = "train/peak_memory_gb"
# What the run cost, summed over its attempts (requeues, resumes), queueing excluded (MLflow's Duration counts from
# the run's creation at submission): wall hours from each attempt's start to its end, device-hours = wall hours ×
# ranks. The sweep's parent run carries the sums over its children.
COST_WALL_HOURS = "cost/wall_hours"
COST_DEVICE_HOURS = "cost/device_hours"
COST_ATTEMPTS = "cost/attempts"
VAL_MIOU = "val/mIoU"
# The seed's March-2020 evaluator: predictions on void (ignored) ground-truth pixels count as false positives.
VAL_MIOU_SEED = "val/mIoU_void_as_fp"
VAL_IOU_PREFIX = "val/IoU/"  # + class name with spaces as underscores, e.g. val/IoU/traffic_light
# train.log_best_of_val (the seed fork's protocol): the best val/mIoU of the N validations so far, the step it came
# from, and N. Selected on val itself, so optimistic: never the run's result, only a labelled best-of-N figure.
VAL_MIOU_BEST = "val/mIoU_best_selected_on_val"
VAL_MIOU_BEST_STEP = "val/mIoU_best_selected_on_val_step"
VAL_MIOU_BEST_N = "val/mIoU_best_selected_on_val_n"

# Artifact paths (relative to the run's artifact root).
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_VAL_DIR = "val"  # val/iter_000123/classes.csv, per-class IoU table at each validation
ARTIFACT_CONFUSION = "final/confusion.npy"  # (n+1)x(n+1) int64, row = GT train id, last col = void prediction
ARTIFACT_PER_IMAGE = "final/per_image_confusion.npz"  # arrays "names" (image ids) and "confusion" (N,n+1,n+1)
ARTIFACT_OVERLAYS = "final/overlays"  # a few PNG overlays of predictions
PREDICTION_KEY = "val/prediction/"  # + image name: image, ground truth, prediction, errors at every validation
ARTIFACT_LEGEND = "predictions/legend.png"  # the colours of the prediction images


def points(fraction: float) -> float:
    """An IoU fraction in points to 4 decimals (the official evaluation prints 3): what the MLflow UI shows is
    readable at a glance, and the same fraction always gives the same logged value."""
    return round(100 * float(fraction), 4)


def iou_metric_name(class_name: str) -> str:
    """``"traffic light"`` → ``"val/IoU/traffic_light"``."""
    return VAL_IOU_PREFIX + class_name.replace(" ", "_")


@dataclass(frozen=True)
class DatasetInput:
    """A dataset a run read, as MLflow records dataset inputs (without MLflow): ``name`` says synthetic or real and
    the split (``synthetic/train``, ``cityscapes/val``), ``digest`` is of its file list, ``context`` is
    ``training`` or ``validation``, ``source`` the data root, ``profile`` what a reader checks first."""

    name: str
    digest: str
    context: str
    source: str
    profile: dict[str, Any] = field(default_factory=dict)


class Tracker(Protocol):
    """What the engine reports through. Implementations may buffer; ``flush`` makes points durable."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, local_path: str | Path, artifact_path: str = "") -> None:
        """Copy a file (or a directory's files) under ``artifact_path`` in the run's artifacts."""
        ...

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """An RGB uint8 image [H,W,3] under ``key`` at ``step`` (one image per key and step)."""
        ...

    def log_inputs(self, datasets: list[DatasetInput]) -> None:
        """The datasets the run reads (logged again on resume: the same record is kept once)."""
        ...

    def flush(self) -> None:
        """Make every point logged so far durable (called before each checkpoint is written)."""
        ...

    def close(self, status: str | None, reason: str | None = None) -> None:
        """End the run: ``FINISHED``, ``FAILED`` (with ``reason``) or ``KILLED`` (stopped; it will resume), or
        None to leave it RUNNING (a requeued job resumes it)."""
        ...


class NullTracker:
    """Reports nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str = "") -> None:
        pass

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        pass

    def log_inputs(self, datasets: list[DatasetInput]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str | None, reason: str | None = None) -> None:
        pass


# The run record: what a run directory holds of a run, written by the job first and mirrored into MLflow by
# experiments.store.mirror (docs/design.md, "The run record"). Every file is rewritten atomically or appended to.
METRICS_FILE = "metrics.jsonl"  # one point a line: {"key", "value", "step", "timestamp" (ms)}; (key, step) once
PARAMS_FILE = "params.json"  # {key: value}
TAGS_FILE = "tags.json"  # {key: text}; "failure_reason" when the run failed
INPUTS_FILE = "inputs.json"  # {dataset name: DatasetInput as a dict}
STATUS_FILE = "status.json"  # {"status": SCHEDULED|RUNNING|FINISHED|FAILED|KILLED, "reason", "time" (s)}
ARTIFACTS_DIR = "artifacts"  # artifacts/<artifact path>/<file>
IMAGES_DIR = "images"  # images/<key>/<step:06d>.png
STATUSES = ("SCHEDULED", "RUNNING", "FINISHED", "FAILED", "KILLED")


def read_record_json(run_dir: Path, name: str) -> dict[str, Any]:
    """One of the record's JSON files ({} when absent); anything but a JSON object is an error naming the file."""
    path = Path(run_dir) / name
    if not path.exists():
        return {}
    check_own(path)
    try:
        data = json.loads(path.read_text())
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DeeplabError(f"{path}: not JSON written by this project; move it away to start afresh")
    return data


def write_record_json(run_dir: Path, name: str, data: dict[str, Any]) -> None:
    """Replace one of the record's JSON files atomically (a reader sees the old file or the new one)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    check_own(path)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    with open_own(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The record's status ({"status", "reason", "time"}), or None when the run directory has none."""
    data = read_record_json(run_dir, STATUS_FILE)
    return data if data.get("status") in STATUSES else None


def write_status(run_dir: Path, status: str, reason: str | None = None) -> None:
    """Set the record's status; a reason also goes into the tags as ``failure_reason``."""
    if status not in STATUSES:
        raise DeeplabError(f"status {status!r}: not one of {', '.join(STATUSES)}")
    if reason:
        tags = read_record_json(run_dir, TAGS_FILE)
        write_record_json(run_dir, TAGS_FILE, {**tags, "failure_reason": reason})
    write_record_json(run_dir, STATUS_FILE, {"status": status, "reason": reason, "time": time.time()})


def complete_lines(path: Path, offset: int = 0) -> tuple[list[str], int]:
    """The whole lines of an append-only file from byte ``offset`` and the offset after the last of them: a
    line torn by a kill mid-write is not read (its writer drops it when it resumes)."""
    if not path.exists():
        return [], offset
    with open_own(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    return data[:end].decode().splitlines(), offset + end


class JsonlTracker:
    """The run record (``metrics.jsonl``, ``params.json``, ``tags.json``, ``inputs.json``, ``status.json``,
    ``artifacts/`` and ``images/<key>/<step>.png`` in the run dir): the default tracker, and what a sweep's job
    writes before MLflow mirrors it.

    Points are buffered and appended at ``flush``; after a resume, points at steps already on disk are skipped,
    so the history holds every step exactly once.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)  # created on the first write, so a run that fails early leaves nothing
        self._buffer: list[dict[str, Any]] = []
        self._last_step: dict[str, int] | None = None  # read at the first point: the run dir may be another's

    def _steps(self) -> dict[str, int]:
        if self._last_step is None:
            self._last_step = self._read_last_steps()
        return self._last_step

    def _read_last_steps(self) -> dict[str, int]:
        last: dict[str, int] = {}
        path = self.run_dir / METRICS_FILE
        lines, end = complete_lines(path)
        if path.exists() and end < path.stat().st_size:  # a torn last line from a kill mid-write: drop it
            with open_own(path, "r+") as fh:
                fh.truncate(end)
        for number, line in enumerate(lines, 1):
            try:
                point = json.loads(line)
                last[point["key"]] = max(last.get(point["key"], -1), int(point["step"]))
            except (ValueError, KeyError, TypeError):
                raise DeeplabError(f"{path} line {number}: not a metric point written by this project") from None
        return last

    def _merge_json(self, name: str, values: dict[str, Any]) -> None:
        write_record_json(self.run_dir, name, {**read_record_json(self.run_dir, name), **values})

    def log_params(self, params: dict[str, Any]) -> None:
        self._merge_json(PARAMS_FILE, params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._merge_json(TAGS_FILE, tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        last, now = self._steps(), int(time.time() * 1000)
        for key, value in metrics.items():
            if step > last.get(key, -1):
                self._buffer.append({"key": key, "value": float(value), "step": int(step), "timestamp": now})
                last[key] = step

    def log_artifact(self, local_path: str | Path, artifact_path: str = "") -> None:
        src = Path(local_path)
        dest = self.run_dir / ARTIFACTS_DIR / artifact_path
        dest.mkdir(parents=True, exist_ok=True)
        if src.resolve().is_relative_to(dest.resolve()):
            return
        if src.is_dir():
            shutil.copytree(src, dest / src.name, dirs_exist_ok=True)
        else:  # through a temporary name: the mirror never uploads half a file
            tmp = dest / f".{src.name}.{os.getpid()}.tmp"
            shutil.copy2(src, tmp)
            tmp.replace(dest / src.name)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        path = self.run_dir / IMAGES_DIR / key / f"{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(image).save(tmp, format="PNG")
        tmp.replace(path)

    def log_inputs(self, datasets: list[DatasetInput]) -> None:
        self._merge_json(INPUTS_FILE, {d.name: asdict(d) for d in datasets})

    def flush(self) -> None:
        if not self._buffer:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open_own(self.run_dir / METRICS_FILE, "a") as fh:
            fh.writelines(json.dumps(p) + "\n" for p in self._buffer)
            fh.flush()
            os.fsync(fh.fileno())
        self._buffer.clear()

    def close(self, status: str | None, reason: str | None = None) -> None:
        """Flush, then record the final status (``reason`` as ``failure_reason``); None leaves it as it is."""
        self.flush()
        if status is not None:
            write_status(self.run_dir, status, reason)
