"""The MLflow tracker: batched sends, every step exactly once across a resume, spooled through an outage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import submitit
from mlflow.tracking import MlflowClient

from experiments.mlflow_tracker import SPOOL_NAME, MlflowTracker
from experiments.server import running_server
from experiments.store import child_runs, ensure_child_run, ensure_experiment, ensure_parent_run
from experiments.system_metrics import SystemSampler


class CountingClient(MlflowClient):
    """Instrumentation (not a mock): the real client, counting its log_batch calls."""

    calls = 0

    def log_batch(self, *args, **kwargs):  # type: ignore[override]
        CountingClient.calls += 1
        return super().log_batch(*args, **kwargs)


def _run(uri: str, name: str = "sweep") -> str:
    eid = ensure_experiment(uri, name)
    parent = ensure_parent_run(uri, eid, name, {"a": 1}, {})
    return ensure_child_run(uri, eid, parent, "abc123", "r50", {"train.seed": 0}, {}).run_id


def _steps(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_points_are_batched_not_sent_one_by_one(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri)
    tracker = MlflowTracker(uri, run_id, spool_dir=tmp_path)
    tracker.client = CountingClient(uri)
    CountingClient.calls = 0
    for step in range(1, 2501):
        tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.01}, step)
    tracker.flush()
    assert CountingClient.calls == 5  # 5000 points in batches of 1000
    assert _steps(uri, run_id) == list(range(1, 2501))


def test_resume_replay_is_not_duplicated(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri)
    first = MlflowTracker(uri, run_id, spool_dir=tmp_path)
    for step in range(1, 11):
        first.log_metrics({"train/loss": float(step)}, step)
    first.flush()  # then "killed" after iteration 10, last checkpoint at 6
    second = MlflowTracker(uri, run_id, spool_dir=tmp_path)
    for step in range(7, 21):
        second.log_metrics({"train/loss": float(step)}, step)
    second.close("FINISHED")
    assert _steps(uri, run_id) == list(range(1, 21))
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_system_samples_join_the_points_and_go_on_after_a_requeue(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(uri)
    key, before = "system/rank0_memory_megabytes", 0
    for step, status in enumerate((None, "FINISHED"), 1):  # a requeued attempt (left RUNNING), then the last one
        tracker = MlflowTracker(uri, run_id, spool_dir=tmp_path, system=SystemSampler(interval_s=0.2))
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
    a, b = _run(uri), _run(uri)
    assert a == b
    eid = ensure_experiment(uri, "sweep")
    parent = ensure_parent_run(uri, eid, "sweep", {}, {})
    assert list(child_runs(uri, eid, parent)) == ["abc123"]


@pytest.mark.slow
def test_server_outage_spools_and_replays(tmp_path: Path) -> None:
    backend = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = _run(backend)
    port_holder: dict[str, str] = {}
    with running_server(backend, tmp_path / "artifacts") as uri:
        port_holder["uri"] = uri
        tracker = MlflowTracker(uri, run_id, spool_dir=tmp_path / "run")
        for step in range(1, 51):
            tracker.log_metrics({"train/loss": float(step)}, step)
        tracker.flush()
    started = time.monotonic()
    for step in range(51, 101):  # server down: training goes on, points are spooled
        tracker.log_metrics({"train/loss": float(step)}, step)
        if step % 10 == 0:
            tracker.flush()
    stalled = time.monotonic() - started
    print(f"5 flushes with the server down took {stalled:.1f} s")
    assert stalled < 60  # one short failed try, then the server is left alone until the retry interval
    assert (tmp_path / "run" / SPOOL_NAME).exists()
    port = int(port_holder["uri"].rsplit(":", 1)[1])
    with running_server(backend, tmp_path / "artifacts", port=port):
        for step in range(101, 121):
            tracker.log_metrics({"train/loss": float(step)}, step)
        tracker.close("FINISHED")
    assert not (tmp_path / "run" / SPOOL_NAME).exists()
    assert _steps(backend, run_id) == list(range(1, 121))


def _log_many(uri: str, run_id: str, spool: str, n: int) -> int:
    tracker = MlflowTracker(uri, run_id, spool_dir=Path(spool))
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
    parent = ensure_parent_run(uri, eid, "load", {}, {})
    runs = [ensure_child_run(uri, eid, parent, f"h{i}", f"r{i}", {}, {}).run_id for i in range(8)]
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=10)
    jobs = [executor.submit(_log_many, uri, rid, str(tmp_path / f"spool{i}"), 1500) for i, rid in enumerate(runs)]
    assert [job.result() for job in jobs] == [1500] * 8
    lost = sum(1500 - len(_steps(uri, rid)) for rid in runs)
    print(f"8 jobs × 1500 points: lost {lost}")
    assert lost == 0
    assert all(_steps(uri, rid) == list(range(1, 1501)) for rid in runs)
