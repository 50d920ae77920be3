"""MLflow runs → pandas: a runs frame, a long curves frame, a per-class frame, per-image confusion matrices."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from deeplab.labels import CLASS_NAMES
from deeplab.tracking import (
    ARTIFACT_PER_IMAGE,
    TRAIN_LR,
    VAL_IOU_PREFIX,
    VAL_MIOU,
    VAL_MIOU_SEED,
    iou_metric_name,
)

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in reports and notebooks

CONFIG_COLUMNS = {"model.backbone": "backbone", "train.iterations": "iterations", "train.seed": "seed"}


def _client(tracking_uri: str) -> MlflowClient:
    """A client on an existing store (MLflow would create an empty sqlite database on first use)."""
    path = Path(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else None
    if path is not None and not path.exists():
        raise AnalysisError(f"no MLflow store at {path} (run the sweep, or `make demo`, first)")
    return MlflowClient(tracking_uri)


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise AnalysisError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
    return found.experiment_id


def _number(text: str | None) -> float | int | str | None:
    if text is None:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _is_database(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "postgresql"))


def _first_points(tracking_uri: str, run_ids: list[str]) -> dict[str, int]:
    """Timestamp (ms) of each run's first logged metric point, when it has one."""
    if not run_ids:
        return {}
    if _is_database(tracking_uri):
        query = sqlalchemy.text(
            "SELECT run_uuid, MIN(timestamp) FROM metrics WHERE run_uuid IN :runs GROUP BY run_uuid"
        ).bindparams(sqlalchemy.bindparam("runs", expanding=True))
        engine = sqlalchemy.create_engine(tracking_uri)
        with engine.connect() as conn:
            found = {rid: int(ts) for rid, ts in conn.execute(query, {"runs": list(run_ids)})}
        engine.dispose()
        return found
    client = MlflowClient(tracking_uri)
    history = {rid: client.get_metric_history(rid, TRAIN_LR) for rid in run_ids}
    return {rid: min(m.timestamp for m in points) for rid, points in history.items() if points}


def _wall_hours(start: int | None, end: int | None, first_point: int | None) -> float:
    """Hours the run trained: from its first logged point (or its start) to its end.

    A sweep creates its MLflow runs at submission, so ``start_time`` also counts the time spent queued; the
    first metric point comes one ``log_every`` window after training starts, a small underestimate instead.
    """
    begin = first_point if first_point is not None else start
    if begin is None:
        return float("nan")
    return max(0.0, ((end or begin) - begin) / 3.6e6)


@dataclass
class _Run:
    run_id: str
    name: str
    status: str
    start: int | None
    end: int | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _sql_runs(tracking_uri: str, experiment_id: str) -> list[_Run]:
    """The experiment's active runs read from MLflow's tables (search_runs builds an ORM object per param: slow)."""
    active = "JOIN runs r ON r.run_uuid = x.run_uuid WHERE r.experiment_id = :eid AND r.lifecycle_stage = 'active'"
    args = {"eid": int(experiment_id)}
    engine = sqlalchemy.create_engine(tracking_uri)
    with engine.connect() as conn:
        query = "SELECT run_uuid, name, status, start_time, end_time FROM runs x WHERE experiment_id = :eid "
        query += "AND lifecycle_stage = 'active'"
        runs = {row[0]: _Run(*row) for row in conn.execute(sqlalchemy.text(query), args)}
        for table in ("params", "tags"):
            rows = conn.execute(sqlalchemy.text(f"SELECT x.run_uuid, x.key, x.value FROM {table} x {active}"), args)
            for run_id, key, value in rows:
                getattr(runs[run_id], table)[key] = value
        query = f"SELECT x.run_uuid, x.key, x.value, x.is_nan FROM latest_metrics x {active}"
        for run_id, key, value, is_nan in conn.execute(sqlalchemy.text(query), args):
            runs[run_id].metrics[key] = float("nan") if is_nan else value
    engine.dispose()
    return list(runs.values())


def _searched_runs(client: MlflowClient, experiment_id: str) -> list[_Run]:
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            i, d = run.info, run.data
            found.append(_Run(i.run_id, i.run_name, i.status, i.start_time, i.end_time, d.params, d.tags, d.metrics))
        token = page.token
        if not token:
            return found


def runs_frame(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per child run: config columns, hash, status, final metrics, wall time and GPU-hours."""
    client = _client(tracking_uri)
    eid = _experiment_id(client, experiment)
    everything = _sql_runs(tracking_uri, eid) if _is_database(tracking_uri) else _searched_runs(client, eid)
    found = [r for r in everything if r.tags.get("config_hash") and r.tags.get("sweep.role") != "parent"]
    first_points = _first_points(tracking_uri, [run.run_id for run in found])
    rows = []
    for run in found:
        p = run.params
        hours = _wall_hours(run.start, run.end, first_points.get(run.run_id))
        devices = int(_number(p.get("info.world_size")) or 1)
        row = {
            "run_id": run.run_id,
            "run_name": run.name,
            "status": run.status,
            "config_hash": run.tags.get("config_hash"),
            **{col: _number(p.get(key)) for key, col in CONFIG_COLUMNS.items()},
            "crop_size": p.get("data.crop_size"),
            "synthetic": any(k.startswith("data.synthetic.") for k in p),
            "miou": run.metrics.get(VAL_MIOU),
            "miou_seed_metric": run.metrics.get(VAL_MIOU_SEED),
            "params": _number(p.get("info.params")),
            "gflops": _number(p.get("info.gflops")),
            "wall_hours": hours,
            "devices": devices,
            "device": p.get("info.device", ""),
            "gpu_hours": hours * devices if p.get("info.device") == "cuda" else float("nan"),
            "device_hours": hours * devices,
            "source": run.tags.get("source", "sweep"),
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise AnalysisError(f"experiment {experiment!r} has no child runs (tag config_hash) in {tracking_uri}")
    return frame.sort_values(["backbone", "iterations", "seed"], kind="stable").reset_index(drop=True)


def curves_frame(
    tracking_uri: str, run_ids: list[str], metrics: tuple[str, ...] = (VAL_MIOU, VAL_MIOU_SEED)
) -> pd.DataFrame:
    """Long frame (run_id, step, metric, value) of metric histories; one SQL query on database stores."""
    if _is_database(tracking_uri):
        engine = sqlalchemy.create_engine(tracking_uri)
        query = sqlalchemy.text(
            "SELECT run_uuid AS run_id, step, key AS metric, value, is_nan FROM metrics "
            "WHERE run_uuid IN :runs AND key IN :keys"
        ).bindparams(sqlalchemy.bindparam("runs", expanding=True), sqlalchemy.bindparam("keys", expanding=True))
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn, params={"runs": list(run_ids), "keys": list(metrics)})
        engine.dispose()
        frame.loc[frame.pop("is_nan").astype(bool), "value"] = float("nan")  # MLflow stores a NaN as 0 + flag
    else:
        client = MlflowClient(tracking_uri)
        frame = pd.DataFrame(
            [
                (rid, m.step, key, m.value)
                for rid in run_ids
                for key in metrics
                for m in client.get_metric_history(rid, key)
            ],
            columns=["run_id", "step", "metric", "value"],
        )
    return frame.drop_duplicates(["run_id", "metric", "step"], keep="last").sort_values(["run_id", "metric", "step"])


def per_class_frame(tracking_uri: str, run_ids: list[str]) -> pd.DataFrame:
    """Per-class IoU of each run's final validation: (run_id, class, iou).

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
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, ARTIFACT_PER_IMAGE, tmp)
        except Exception as err:
            raise AnalysisError(
                f"run {run_id} has no {ARTIFACT_PER_IMAGE} artifact ({err.__class__.__name__})"
            ) from None
        with np.load(Path(path)) as data:
            return [str(n) for n in data["names"]], data["confusion"].astype(np.int64)
