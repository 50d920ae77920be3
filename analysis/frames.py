"""MLflow runs → pandas: a runs frame, a long curves frame, a per-class frame, per-image confusion matrices."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from deeplab.tracking import ARTIFACT_PER_IMAGE, VAL_IOU_PREFIX, VAL_MIOU, VAL_MIOU_SEED

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in reports and notebooks

CONFIG_COLUMNS = {"model.backbone": "backbone", "train.iterations": "iterations", "train.seed": "seed"}


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


def runs_frame(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per child run: config columns, hash, status, final metrics, wall time and GPU-hours."""
    client = MlflowClient(tracking_uri)
    eid = _experiment_id(client, experiment)
    rows, token = [], None
    while True:
        page = client.search_runs([eid], "tags.config_hash != ''", max_results=1000, page_token=token)
        for run in page:
            if run.data.tags.get("sweep.role") == "parent":
                continue
            p = run.data.params
            end = run.info.end_time or run.info.start_time
            hours = max(0.0, (end - run.info.start_time) / 3.6e6) if run.info.start_time else float("nan")
            devices = int(_number(p.get("info.world_size")) or 1)
            row = {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "config_hash": run.data.tags.get("config_hash"),
                **{col: _number(p.get(key)) for key, col in CONFIG_COLUMNS.items()},
                "crop_size": p.get("data.crop_size"),
                "synthetic": any(k.startswith("data.synthetic.") for k in p),
                "miou": run.data.metrics.get(VAL_MIOU),
                "miou_seed_metric": run.data.metrics.get(VAL_MIOU_SEED),
                "params": _number(p.get("info.params")),
                "gflops": _number(p.get("info.gflops")),
                "wall_hours": hours,
                "devices": devices,
                "device": p.get("info.device", ""),
                "gpu_hours": hours * devices if p.get("info.device") == "cuda" else float("nan"),
                "device_hours": hours * devices,
                "source": run.data.tags.get("source", "sweep"),
            }
            rows.append(row)
        token = page.token
        if not token:
            break
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise AnalysisError(f"experiment {experiment!r} has no child runs (tag config_hash) in {tracking_uri}")
    return frame.sort_values(["backbone", "iterations", "seed"], kind="stable").reset_index(drop=True)


def curves_frame(
    tracking_uri: str, run_ids: list[str], metrics: tuple[str, ...] = (VAL_MIOU, VAL_MIOU_SEED)
) -> pd.DataFrame:
    """Long frame (run_id, step, metric, value) of metric histories; one SQL query on database stores."""
    if tracking_uri.startswith(("sqlite:", "postgresql")):
        engine = sqlalchemy.create_engine(tracking_uri)
        query = sqlalchemy.text(
            "SELECT run_uuid AS run_id, step, key AS metric, value FROM metrics "
            "WHERE run_uuid IN :runs AND key IN :keys"
        ).bindparams(sqlalchemy.bindparam("runs", expanding=True), sqlalchemy.bindparam("keys", expanding=True))
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn, params={"runs": list(run_ids), "keys": list(metrics)})
        engine.dispose()
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
    """Final per-class IoU: (run_id, class, iou)."""
    client = MlflowClient(tracking_uri)
    rows = []
    for rid in run_ids:
        for key, value in client.get_run(rid).data.metrics.items():
            if key.startswith(VAL_IOU_PREFIX):
                rows.append((rid, key[len(VAL_IOU_PREFIX) :].replace("_", " "), value))
    return pd.DataFrame(rows, columns=["run_id", "class", "iou"])


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
