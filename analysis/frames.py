"""MLflow runs → pandas: a runs frame, a long curves frame, a per-class frame, per-image confusion matrices."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from deeplab.config import Config, flatten, to_dict
from deeplab.errors import DeeplabError
from deeplab.labels import CLASS_NAMES
from deeplab.params import config_from_params
from deeplab.tracking import (
    ARTIFACT_PER_IMAGE,
    COST_DEVICE_HOURS,
    COST_WALL_HOURS,
    TRAIN_LR,
    VAL_IOU_PREFIX,
    VAL_MIOU,
    VAL_MIOU_SEED,
    iou_metric_name,
)
from experiments.axes import SHORT_NAMES
from experiments.store import (
    PARENT_ROLE,
    StoreGone,
    download_artifact,
    find_experiment,
    first_points,
    metric_histories,
    run_records,
    sqlite_path,
)


def column(key: str) -> str:
    """The runs frame's column of a dotted config key: the axis table's short name, else the key itself."""
    return SHORT_NAMES.get(key, key)


def _experiment_id(tracking_uri: str, experiment: str) -> str:
    """The experiment's id in an existing store (a missing sqlite file is an error, not a new empty store)."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.exists():
        raise AnalysisError(f"no MLflow store at {path} (run the sweep, or `make demo`, first)")
    try:
        found = find_experiment(tracking_uri, experiment)
    except StoreGone as err:
        raise AnalysisError(str(err)) from None
    if found is None:
        raise AnalysisError(f"no MLflow experiment named {experiment!r} in {tracking_uri}")
    return found


def _config(name: str, params: dict[str, str]) -> Config:
    try:
        return config_from_params(params)
    except DeeplabError as err:
        raise AnalysisError(f"run {name}: {err}") from None


def config_columns(cfg: Config) -> dict[str, Any]:
    """A run's config as runs-frame columns: every key typed as the config holds it, the axis table's under their
    short names (lists as tuples: a column may be a cell axis, and cells are grouped by value)."""
    return {column(k): tuple(v) if isinstance(v, list) else v for k, v in flatten(to_dict(cfg)).items()}


def _wall_hours(start: int | None, end: int | None, first_point: int | None) -> float:
    """Hours the run trained, for runs without the engine's ``cost/wall_hours`` (imported logs, older runs): from
    its first logged point (or its start) to its end.

    A sweep creates its MLflow runs at submission, so ``start_time`` also counts the time spent queued; the
    first metric point comes one ``log_every`` window after training starts, a small underestimate instead.
    """
    begin = first_point if first_point is not None else start
    if begin is None:
        return float("nan")
    return max(0.0, ((end or begin) - begin) / 3.6e6)


LOGGED_DEVICE_HOURS = COST_DEVICE_HOURS  # a run's own cost, when its engine logged one (a column of that name)
LEGACY_SEED_METRIC = "val/mIoU_seed_metric"  # what the void-as-FP mIoU was called while mIoU was a fraction


def runs_frame(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per child run: its config read back from its params (every key a column: the axis table's under
    their short names, the rest under their dotted keys; the Config itself in ``config``), hash, status, final
    metrics (mIoU in points), wall time, GPU-hours."""
    eid = _experiment_id(tracking_uri, experiment)
    records = run_records(tracking_uri, eid)
    found = [r for r in records if r.tags.get("config_hash") and r.tags.get("sweep.role") != PARENT_ROLE]
    began = first_points(tracking_uri, [run.run_id for run in found], TRAIN_LR)
    legacy = [run.name for run in found if LEGACY_SEED_METRIC in run.metrics]
    if legacy:
        raise AnalysisError(
            f"experiment {experiment!r}: {len(legacy)} run(s) ({', '.join(legacy[:3])}) were logged with mIoU as a "
            "fraction, before the store kept points; sweep into a fresh store (or re-import the log)"
        )
    rows = []
    for run in found:
        p = run.params
        cfg = _config(run.name, p)
        devices = int(p.get("info.world_size", 1))
        # the engine's cost metrics (every attempt summed, queueing excluded): what the runs table shows
        hours = run.metrics.get(COST_WALL_HOURS, _wall_hours(run.start, run.end, began.get(run.run_id)))
        device_hours = run.metrics.get(COST_DEVICE_HOURS, hours * devices)
        row = {
            "run_id": run.run_id,
            "run_name": run.name,
            "status": run.status,
            "config_hash": run.tags.get("config_hash"),
            **config_columns(cfg),
            "synthetic": cfg.data.synthetic is not None,
            # a non-finite value (a diverged or corrupted run) is no number to average: missing, and said so
            "miou": _finite(run.metrics.get(VAL_MIOU)),
            "miou_nonfinite": VAL_MIOU in run.metrics and _finite(run.metrics[VAL_MIOU]) is None,
            "miou_void_as_fp": _finite(run.metrics.get(VAL_MIOU_SEED)),
            # info.* params are what the engine measured, not config: read with their known types
            "params": float(p.get("info.params", "nan")),
            "gflops": float(p.get("info.gflops", "nan")),
            "wall_hours": hours,
            "devices": devices,
            "device": p.get("info.device", ""),
            "gpu_hours": device_hours if p.get("info.device") == "cuda" else float("nan"),
            "device_hours": device_hours,
            "source": run.tags.get("source", "sweep"),
            LOGGED_DEVICE_HOURS: run.metrics.get(LOGGED_DEVICE_HOURS, float("nan")),
            "experiment_id": eid,
            "config": cfg,  # the run's Config, for whatever reads more of it (deviations, one configuration per cell)
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise AnalysisError(f"experiment {experiment!r} has no child runs (tag config_hash) in {tracking_uri}")
    return frame.sort_values(["backbone", "iterations", "seed"], kind="stable").reset_index(drop=True)


def curves_frame(
    tracking_uri: str, run_ids: list[str], metrics: tuple[str, ...] = (VAL_MIOU, VAL_MIOU_SEED)
) -> pd.DataFrame:
    """Long frame (run_id, step, metric, value) of metric histories (one query on database stores)."""
    frame = metric_histories(tracking_uri, run_ids, metrics)[["run_id", "step", "metric", "value"]]
    frame = frame.drop_duplicates(["run_id", "metric", "step"], keep="last")
    frame = frame[frame.value.astype(float).abs() < STORED_INFINITY]  # NaN or ±inf: drawn or averaged nowhere
    return frame.sort_values(["run_id", "metric", "step"])


# MLflow's SQL stores keep ±inf as ±1.8e308 (the largest double): a value that large was infinite when logged
STORED_INFINITY = 1e300


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and abs(value) < STORED_INFINITY else None


def per_class_frame(tracking_uri: str, run_ids: list[str]) -> pd.DataFrame:
    """Per-class IoU (points) of each run's final validation: (run_id, class, iou).

    Only points at the step of the run's last ``val/mIoU`` count: a class whose IoU is undefined at the end
    (absent and never predicted) is not logged then, and MLflow's latest value for it is an older validation's.
    """
    keys = tuple(iou_metric_name(name) for name in CLASS_NAMES)
    points = curves_frame(tracking_uri, run_ids, (VAL_MIOU, *keys))
    last = points[points.metric == VAL_MIOU].groupby("run_id").step.max()
    final = points[(points.metric != VAL_MIOU) & (points.step == points.run_id.map(last))]
    names = final.metric.str[len(VAL_IOU_PREFIX) :].str.replace("_", " ")
    return pd.DataFrame({"run_id": final.run_id, "class": names, "iou": final.value}).reset_index(drop=True)


def per_image_confusions(tracking_uri: str, run_id: str) -> tuple[list[str], np.ndarray]:
    """The final validation's per-image confusion matrices of one run (names, array (N, n+1, n+1))."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_artifact(tracking_uri, run_id, ARTIFACT_PER_IMAGE, Path(tmp))
        except Exception as err:
            raise AnalysisError(
                f"run {run_id} has no {ARTIFACT_PER_IMAGE} artifact ({err.__class__.__name__})"
            ) from None
        with np.load(Path(path)) as data:
            return [str(n) for n in data["names"]], data["confusion"].astype(np.int64)
