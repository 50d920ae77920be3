"""The job's tracker: the run record first, mirrored into MLflow in batches, every step exactly once across a
resume and through an outage; the mirror itself idempotent (a lost cursor, a send cut short, artifacts, images)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import submitit
from mlflow.tracking import MlflowClient

from deeplab.tracking import METRICS_FILE, JsonlTracker
from experiments.mlflow_tracker import MlflowTracker
from experiments.server import running_server
from experiments.store import (
    NewChild,
    RunGone,
    child_runs,
    ensure_child_runs,
    ensure_experiment,
    ensure_parent_run,
    mirror_run,
)
from experiments.store.mirror import CURSOR_FILE
from experiments.system_metrics import SystemSampler


def _run(uri: str, folder: Path, name: str = "sweep", digest: str = "abc123") -> str:
    eid = ensure_experiment(uri, name)
    parent = ensure_parent_run(uri, eid, name, {"a": 1}, {}, folder=folder)
    cell = NewChild(digest, "r50", {"train.seed": 0}, {}, folder / digest)
    return ensure_child_runs(uri, eid, parent, [cell])[digest].run_id


def _steps(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_points_are_batched_not_sent_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri, tmp_path / "runs")
    tracker = MlflowTracker(uri, run_id, run_dir=tmp_path / "runs" / "abc123")
    tracker.log_params({"train.seed": 0})  # the engine's first call: the run is RUNNING
    calls = []
    log_batch = MlflowClient.log_batch  # instrumentation (not a mock): the real client, its calls counted
    monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: calls.append(1) or log_batch(*a, **k))
    for step in range(1, 2501):
        tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.01}, step)
    tracker.flush()
    assert len(calls) == 5  # 5000 points in batches of 1000
    assert _steps(uri, run_id) == list(range(1, 2501))


def test_resume_replay_is_not_duplicated(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "abc123"
    first = MlflowTracker(uri, run_id, run_dir=run_dir)
    for step in range(1, 11):
        first.log_metrics({"train/loss": float(step)}, step)
    first.flush()  # then "killed" after iteration 10, last checkpoint at 6
    second = MlflowTracker(uri, run_id, run_dir=run_dir)
    for step in range(7, 21):
        second.log_metrics({"train/loss": float(step)}, step)
    second.close("FINISHED")
    assert _steps(uri, run_id) == list(range(1, 21))
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_system_samples_join_the_points_and_go_on_after_a_requeue(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri, tmp_path / "runs")
    key, before = "system/rank0_memory_megabytes", 0
    for step, status in enumerate((None, "FINISHED"), 1):  # a requeued attempt (left RUNNING), then the last one
        run_dir = tmp_path / "runs" / "abc123"
        tracker = MlflowTracker(uri, run_id, run_dir=run_dir, system=SystemSampler(interval_s=0.2))
        time.sleep(0.3)
        assert len(_steps(uri, run_id, key)) == before  # no sample before the engine's first call
        tracker.log_metrics({"train/loss": 1.0}, step)  # which starts the sampler
        time.sleep(0.5)  # a sample at the start, one every 0.2 s, one at close
        tracker.close(status)
        steps = _steps(uri, run_id, key)
        assert len(steps) >= before + 3 and steps == list(range(len(steps)))  # numbered on, never twice
        before = len(steps)
    metrics = MlflowClient(uri).get_run(run_id).data.metrics
    node = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"}
    assert node | {key, "system/rank0_cpu_utilization_percentage"} <= set(metrics)
    assert 0 < metrics[key] < metrics["system/system_memory_usage_megabytes"]


def test_ensure_functions_are_idempotent(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    a, b = _run(uri, tmp_path / "runs"), _run(uri, tmp_path / "runs")
    assert a == b
    eid = ensure_experiment(uri, "sweep")
    parent = ensure_parent_run(uri, eid, "sweep", {}, {}, folder=tmp_path / "runs")
    assert list(child_runs(uri, eid, parent)) == ["abc123"]


@pytest.mark.slow
def test_a_server_outage_keeps_everything_in_the_run_dir_and_mirrors_it_when_back(tmp_path: Path) -> None:
    backend = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(backend, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "abc123"
    port_holder: dict[str, str] = {}
    with running_server(backend, tmp_path / "artifacts") as uri:
        port_holder["uri"] = uri
        tracker = MlflowTracker(uri, run_id, run_dir=run_dir)
        for step in range(1, 51):
            tracker.log_metrics({"train/loss": float(step)}, step)
        tracker.flush()
    started = time.monotonic()
    for step in range(51, 101):  # server down: training goes on, points stay in the run dir
        tracker.log_metrics({"train/loss": float(step)}, step)
        if step % 10 == 0:
            tracker.flush()
    stalled = time.monotonic() - started
    print(f"5 flushes with the server down took {stalled:.1f} s")
    assert stalled < 60  # one short failed try, then the server is left alone until the retry interval
    assert _steps(backend, run_id) == list(range(1, 51))
    assert len((run_dir / METRICS_FILE).read_text().splitlines()) == 100
    port = int(port_holder["uri"].rsplit(":", 1)[1])
    with running_server(backend, tmp_path / "artifacts", port=port):
        for step in range(101, 121):
            tracker.log_metrics({"train/loss": float(step)}, step)
        tracker.close("FINISHED")
    assert _steps(backend, run_id) == list(range(1, 121))
    assert MlflowClient(backend).get_run(run_id).info.status == "FINISHED"


def _log_many(uri: str, run_id: str, run_dir: str, n: int) -> int:
    tracker = MlflowTracker(uri, run_id, run_dir=Path(run_dir))
    for step in range(1, n + 1):
        tracker.log_metrics({"train/loss": step * 0.5}, step)
        if step % 300 == 0:
            tracker.flush()
    tracker.close("FINISHED")
    return n


@pytest.mark.slow
def test_eight_concurrent_local_jobs_lose_no_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the jobs unpickle _log_many from this module: let their interpreters find it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    eid = ensure_experiment(uri, "load")  # the store is created once, before the jobs fan out
    parent = ensure_parent_run(uri, eid, "load", {}, {}, folder=tmp_path / "runs")
    cells = [NewChild(f"h{i}", f"r{i}", {}, {}, tmp_path / "runs" / f"h{i}") for i in range(8)]
    runs = [c.run_id for c in ensure_child_runs(uri, eid, parent, cells).values()]
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=10)
    jobs = [executor.submit(_log_many, uri, rid, str(tmp_path / "runs" / f"h{i}"), 1500) for i, rid in enumerate(runs)]
    assert [job.result() for job in jobs] == [1500] * 8
    lost = sum(1500 - len(_steps(uri, rid)) for rid in runs)
    print(f"8 jobs × 1500 points: lost {lost}")
    assert lost == 0
    assert all(_steps(uri, rid) == list(range(1, 1501)) for rid in runs)


def test_the_mirror_sends_each_point_artifact_and_image_once_whatever_it_lost(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "abc123"
    record = JsonlTracker(run_dir)
    for step in range(1, 31):
        record.log_metrics({"train/loss": 1.0 / step}, step)
    (tmp_path / "table.csv").write_text("class,iou\n")
    record.log_artifact(tmp_path / "table.csv", "val/iter_000030")
    record.log_image(np.zeros((4, 6, 3), np.uint8), "val/prediction/a", 30)
    record.set_tags({"note": "x", "gone": None})
    record.close("FINISHED")
    first = mirror_run(uri, run_dir)
    assert (first.points, first.artifacts, first.images, first.status) == (30, 1, 1, "FINISHED")
    assert mirror_run(uri, run_dir).sent == 0  # nothing new
    (run_dir / CURSOR_FILE).unlink()  # the cursor lost: the store's history decides what is there
    assert mirror_run(uri, run_dir).points == 0
    cursor = json.loads((run_dir / CURSOR_FILE).read_text())
    cursor.update(offset=0, pending=True)  # a send cut short: it may or may not have landed
    (run_dir / CURSOR_FILE).write_text(json.dumps(cursor))
    with open(run_dir / METRICS_FILE, "a") as fh:
        fh.write(json.dumps({"key": "train/loss", "value": 0.01, "step": 31, "timestamp": 1}) + "\n")
    assert mirror_run(uri, run_dir).points == 1
    client = MlflowClient(uri)
    assert _steps(uri, run_id) == list(range(1, 32))
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert sum(p.endswith(".png") for p in images) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["note"] == "x" and "gone" not in run.data.tags


def test_a_run_deleted_in_mlflow_while_it_trains_is_one_line_and_training_goes_on(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "abc123"
    tracker = MlflowTracker(uri, run_id, run_dir=run_dir, start_tags={"host": "h"})
    tracker.log_metrics({"train/loss": 1.0}, 1)
    MlflowClient(uri).delete_run(run_id)  # someone tidies the UI
    for step in range(2, 6):
        tracker.log_metrics({"train/loss": 1.0 / step}, step)
        tracker.flush()
    tracker.close("FINISHED")
    said = [line for line in capfd.readouterr().err.splitlines() if "was deleted" in line]
    assert len(said) == 1 and f"mlflow runs restore --run-id {run_id}" in said[0]
    assert len((run_dir / METRICS_FILE).read_text().splitlines()) == 5  # the record has everything
    with pytest.raises(RunGone, match="was deleted"):
        mirror_run(uri, run_dir)
    MlflowClient(uri).restore_run(run_id)  # the documented way back
    assert mirror_run(uri, run_dir).status == "FINISHED"
    assert _steps(uri, run_id) == list(range(1, 6))
