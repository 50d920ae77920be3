"""Reliability drills: a diverging run among healthy ones, a tracking server stopped mid-training, and a 16-run
grid through SLURM."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny import REPO, tiny_config

from deeplab.engine import train
from deeplab.tracking import METRICS_FILE
from experiments.errors import ExperimentsError
from experiments.mlflow_tracker import MlflowTracker
from experiments.server import free_port, start_server, stop_server
from experiments.spec import load_spec
from experiments.status import status_rows
from experiments.store import NewChild, child_runs, ensure_child_runs, ensure_experiment, ensure_parent_run
from experiments.sweep import submit

TINY_RUN = {
    "data.synthetic": None,
    "data.crop_size": [32, 64],
    "data.batch_size_per_gpu": 2,
    "train.eval_every": 2,
    "train.checkpoint_every": 2,
    "train.log_every": 1,
    "schedule.warmup_iters": 1,
    "train.keep_weights": False,  # the drills test tracking and scheduling: 64 runs' weights would be ~10 GB
}


def write_spec(tmp_path: Path, data_root: Path, grid: dict[str, list[Any]], **overrides: Any) -> Path:
    spec = {
        "name": "drill",
        "base": str(REPO / "configs" / "synthetic_tiny.yaml"),
        "grid": grid,
        "overrides": {**TINY_RUN, "data.root": str(data_root), **overrides},
        "runs_root": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "executor": {
            "local": {"parallelism": 2},
            "slurm": {
                "gpus_per_node": 1,
                "tasks_per_node": 1,
                "cpus_per_task": 1,
                "mem": "1G",
                "time": 30,
                "array_parallelism": 2,
            },
        },
    }
    path = tmp_path / "drill.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _children(uri: str, name: str = "drill") -> dict[str, Any]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    parent = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'parent'")[0]
    return {c.run_id: c for c in child_runs(uri, experiment.experiment_id, parent.info.run_id).values()}


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_diverging_run_ends_failed_with_its_reason_and_the_others_finish(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the poisoned runs' loss becomes inf/NaN within a few iterations (a learning rate of 1e12, no warm-up)
    path = write_spec(
        tmp_path,
        tiny_data,
        {"optim.lr": [0.01, 1.0e12], "train.seed": [0, 1]},
        **{"train.iterations": 4, "schedule.warmup": "none"},
    )
    spec = load_spec(path)
    with pytest.raises(ExperimentsError, match=r"2 run\(s\) failed: "):
        submit(spec, "local", wait=True)
    printed = capsys.readouterr().out
    assert printed.count("TrainingDiverged: training diverged at iteration") == 2, printed
    client = MlflowClient(spec.tracking_uri)
    runs = [client.get_run(run_id) for run_id in _children(spec.tracking_uri)]
    by_lr = {(r.data.params["optim.lr"], r.data.params["train.seed"]): r for r in runs}
    print("NaN drill:", {k: r.info.status for k, r in by_lr.items()})
    for (lr, _), run in by_lr.items():
        logs = [a.path for a in client.list_artifacts(run.info.run_id, "logs")]  # the job's stdout and stderr
        assert sorted(Path(p).suffix for p in logs) == [".err", ".out"], logs
        if float(lr) > 1:
            assert run.info.status == "FAILED"
            assert run.data.tags["failure_reason"].startswith("training diverged at iteration")
        else:
            assert run.info.status == "FINISHED"
            assert _steps(client, run.info.run_id, "train/loss") == [1, 2, 3, 4]
            _assert_browsable(client, run)
    assert len(by_lr) == 4
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])  # the sweep's cost: its runs' sum
    for key in ("cost/device_hours", "cost/wall_hours"):
        assert parent.data.metrics[key] == pytest.approx(sum(r.data.metrics.get(key, 0) for r in runs))


def _assert_browsable(client: MlflowClient, run: Any) -> None:
    """What the run's page shows: system metrics, the datasets it read, the prediction images at each validation,
    the cost and where the time went."""
    metrics = run.data.metrics
    system = {
        "system/cpu_utilization_percentage",
        "system/system_memory_usage_megabytes",
        "system/rank0_memory_megabytes",
    }
    assert system <= set(metrics), sorted(metrics)
    assert metrics["cost/attempts"] == 1 and 0 < metrics["cost/device_hours"] == metrics["cost/wall_hours"]
    assert {"train/data_time_s", "train/step_time_s", "train/peak_memory_gb"} <= set(metrics)
    inputs = {d.dataset.name: [t.value for t in d.tags] for d in run.inputs.dataset_inputs}
    assert inputs == {"cityscapes/train": ["training"], "cityscapes/val": ["validation"]}
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    for step in (2, 4):  # every validation, as the image slider's steps
        assert any(p.startswith("images/val~prediction~") and f"+step+{step}+" in p for p in images), images
    assert [a.path for a in client.list_artifacts(run.info.run_id, "predictions")] == ["predictions/legend.png"]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1000)  # past its own 900 s deadline, so a slow machine fails with the count finished
def test_sixteen_runs_through_slurm_lose_nothing(slurm_cluster: Any, tiny_data: Path, tmp_path: Path) -> None:
    # 16 array tasks, two at a time, each writing to one sqlite store while `status` polls it: eight rounds of
    # jobs starting, logging and ending under concurrent reads (64 runs proved the same in 32 rounds, 4x the time)
    n, iterations = 16, 2
    path = write_spec(tmp_path, tiny_data, {"train.seed": list(range(n))}, **{"train.iterations": iterations})
    spec = load_spec(path)
    jobs = submit(spec, "slurm")
    assert len(jobs) == n
    seen: dict[str, str] = {}
    polls = regressions = 0
    order = {"SCHEDULED": 0, "RUNNING": 1, "FINISHED": 2}
    deadline = time.monotonic() + 900
    while True:
        rows = status_rows(spec)
        polls += 1
        assert len(rows) == n
        for row in rows:
            status, job = str(row["status"]), str(row["job"])
            assert status in order, row
            assert job != "-", row  # every run knows its array task
            if order[status] < order[seen.get(str(row["hash"]), "SCHEDULED")]:
                regressions += 1
            seen[str(row["hash"])] = status
            if job.endswith("COMPLETED"):  # the job closes its MLflow run before it exits
                assert status == "FINISHED", row
            if status == "FINISHED":
                assert row["iteration"] == f"{iterations}/{iterations}" and row["val_mIoU"] != "-", row
        if all(s == "FINISHED" for s in seen.values()) and len(seen) == n:
            break
        assert time.monotonic() < deadline, f"{sum(s == 'FINISHED' for s in seen.values())}/{n} finished"
        time.sleep(3)
    client = MlflowClient(spec.tracking_uri)
    lost = 0
    for run_id in _children(spec.tracking_uri):
        lost += iterations - len(set(_steps(client, run_id, "train/loss")))
        assert _steps(client, run_id, "train/loss") == list(range(1, iterations + 1))
        assert _steps(client, run_id, "val/mIoU") == [iterations]
    states = {slurm_cluster.wait(job.job_id, timeout=60) for job in jobs}
    print(f"{n}-run load: {n} finished, {lost} metric points lost, {polls} status polls, {regressions} regressions")
    assert states == {"COMPLETED"} and regressions == 0 and lost == 0


@pytest.mark.slow
def test_tracking_server_stopped_mid_training_then_restarted(tiny_data: Path, tmp_path: Path) -> None:
    """A real training run against `mlflow server`: the server is stopped at iteration 8 and started again (same
    port, same store) at iteration 20. Training never stops; the points of the outage wait in the run directory and
    are mirrored when the server is back; the history ends with every step exactly once."""
    backend, artifacts = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "artifacts"
    eid = ensure_experiment(backend, "outage")
    parent = ensure_parent_run(backend, eid, "outage", {}, {}, folder=tmp_path / "runs")
    run_dir = tmp_path / "runs" / "h0"
    run_id = ensure_child_runs(backend, eid, parent, [NewChild("h0", "r50-outage", {}, {}, run_dir)])["h0"].run_id
    port = free_port()
    server = start_server(backend, artifacts, port=port)
    uri = f"http://127.0.0.1:{port}"
    seen: dict[str, int] = {}

    def on_iteration(iteration: int) -> None:
        nonlocal server
        if iteration == 8:
            stop_server(server)
            seen["down_at"] = iteration
        elif iteration == 20:
            recorded = len((run_dir / METRICS_FILE).read_text().splitlines())
            seen["waiting"] = recorded - sum(len(MlflowClient(backend).get_metric_history(run_id, k)) for k in
                                             {json.loads(x)["key"] for x in (run_dir / METRICS_FILE).open()})  # fmt: skip
            server = start_server(backend, artifacts, port=port)
            seen["up_at"] = iteration

    try:
        tracker = MlflowTracker(uri, run_id, run_dir=run_dir, retry_interval_s=5.0)
        cfg = tiny_config(tiny_data, **{"train.iterations": 30, "train.eval_every": 10, "train.checkpoint_every": 5})
        result = train(cfg, run_dir, tracker, progress="lines", on_iteration=on_iteration)
        tracker.close("FINISHED")
    finally:
        stop_server(server)
    client = MlflowClient(backend)
    lost = 30 - len(set(_steps(client, run_id, "train/loss")))
    print(
        f"tracking outage drill: server down iterations {seen['down_at']}..{seen['up_at']}, "
        f"{seen['waiting']} points waited in the run directory, training {result.status}, {lost} points lost"
    )
    assert result.status == "finished" and seen["waiting"] > 0
    assert _steps(client, run_id, "train/loss") == list(range(1, 31))
    assert _steps(client, run_id, "val/mIoU") == [10, 20, 30]
    assert client.get_run(run_id).info.status == "FINISHED"
