"""Runs are never left SCHEDULED/RUNNING by jobs that are gone, and a store that disappears mid-sweep is neither
recreated nor written into by mistake: the job trains on into its run directory; status, sync and sweep say what
happened, and sync mirrors the run directory when the store is back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from tiny import TINY

from deeplab.checkpoint import CHECKPOINT_NAME, save_checkpoint
from deeplab.config import config_hash, to_dict
from deeplab.tracking import METRICS_FILE, STATUS_FILE, JsonlTracker
from experiments.cli import sync
from experiments.errors import ExperimentsError
from experiments.jobs import JobRecord, read_job, write_job
from experiments.spec import RunSpec, load_spec
from experiments.status import status_report
from experiments.store import set_run_status
from experiments.sweep import plan, submit

SMALL = {
    "data.synthetic": None,
    "data.crop_size": [32, 64],
    "data.batch_size_per_gpu": 2,
    "train.eval_every": 0,
    "train.log_every": 1,
    "schedule.warmup_iters": 1,
    "train.keep_weights": False,
}


def _spec(tmp_path: Path, data: Path, grid: dict, **overrides: object) -> Path:
    path = tmp_path / "spec.yaml"
    spec = {
        "name": f"rec_{uuid.uuid4().hex[:8]}",
        "base": str(TINY),
        "runs_root": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "grid": grid,
        "overrides": {**SMALL, "data.root": str(data), **overrides},
        "executor": {"local": {"parallelism": 1}},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _dead_job(run: RunSpec, run_id: str) -> None:
    """The record of a local job that started and has since died."""
    proc = subprocess.Popen(["sleep", "60"])
    write_job(run.run_dir, JobRecord.local("local", str(proc.pid), run_id, proc.pid))
    proc.kill()
    proc.wait()


def _checkpoint(run: RunSpec, iteration: int, finished: bool) -> None:
    state = {"iteration": iteration, "config": to_dict(run.config), "config_hash": config_hash(run.config)}
    state |= {"model": {}, "final_metrics": {"val/mIoU": 50.0}} if finished else {"model": {}}
    save_checkpoint(run.run_dir / CHECKPOINT_NAME, state)


def test_runs_left_going_by_dead_jobs_are_reconciled_from_their_run_dirs(tiny_data: Path, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, tiny_data, {"train.seed": [0, 1, 2, 3, 4]}, **{"train.iterations": 6}))
    uri = spec.tracking_uri
    finished, unfinished, spooled, alive, unsubmitted = plan(spec, uri, dry_run=False)
    for p in (finished, unfinished, spooled):  # their jobs started, then died without a word
        set_run_status(uri, p.run.run_dir, "RUNNING")
        _dead_job(p.run, p.child.run_id)
    _checkpoint(finished.run, 6, finished=True)
    _checkpoint(unfinished.run, 3, finished=False)
    _checkpoint(spooled.run, 6, finished=True)
    record = JsonlTracker(spooled.run.run_dir)  # the store was away at the end: the record has it, MLflow not
    for step in range(1, 7):
        record.log_metrics({"train/loss": 1.0 / step}, step)
    record.close("FINISHED")
    write_job(alive.run.run_dir, JobRecord.local("local", str(os.getpid()), alive.child.run_id, os.getpid()))

    notes, rows = status_report(spec)
    assert notes == [
        f"reconciled {finished.run.name}: was RUNNING, its local job {read_job(finished.run.run_dir).job_id} on "
        f"{os.uname().nodename} has ended; its checkpoint is finished: FINISHED",
        f"reconciled {unfinished.run.name}: was RUNNING, its local job {read_job(unfinished.run.run_dir).job_id} on "
        f"{os.uname().nodename} has ended at iteration 3/6: FAILED",
        f"reconciled {spooled.run.name}: was RUNNING, its local job {read_job(spooled.run.run_dir).job_id} on "
        f"{os.uname().nodename} has ended; its run directory ended it FINISHED (6 points mirrored)",
        f"reconciled {unsubmitted.run.name}: was SCHEDULED, never submitted (the command that created it stopped "
        "first): KILLED",
    ]
    assert [r["status"] for r in rows] == ["FINISHED", "FAILED", "FINISHED", "SCHEDULED", "KILLED"]
    client = MlflowClient(uri)
    reason = client.get_run(unfinished.child.run_id).data.tags["failure_reason"]
    assert reason.endswith("has ended at iteration 3/6; `experiments sweep` resumes it")
    assert sorted(m.step for m in client.get_metric_history(spooled.child.run_id, "train/loss")) == [1, 2, 3, 4, 5, 6]
    parent = finished.child.tags["mlflow.parentRunId"]
    assert client.get_run(parent).info.status == "RUNNING"  # one child is still going

    assert status_report(spec)[0] == []  # nothing left to set right: a second look changes nothing
    _dead_job(alive.run, alive.child.run_id)
    notes, rows = status_report(spec)
    assert len(notes) == 1 and notes[0].endswith("has ended at iteration 0/6: FAILED")
    assert client.get_run(parent).info.status == "FAILED"  # the last child to end closed it


def test_status_shows_the_iteration_a_run_really_reached(tiny_data: Path, tmp_path: Path, sqlite_store: str) -> None:
    """Not the last log window's step: a finished run's last iteration (its final validation and checkpoint), and
    the checkpoint's when the store lags behind the run directory."""
    spec = load_spec(_spec(tmp_path, tiny_data, {"train.seed": [0, 1, 2]}, **{"train.iterations": 6}))
    uri = spec.tracking_uri
    assert uri == sqlite_store
    windows, validated, lagging = plan(spec, uri, dry_run=False)
    client = MlflowClient(uri)
    for p, lr_steps, val_steps, status in (
        (windows, [4], [], "FINISHED"),  # train.log_every 4: no window at 6; the checkpoint says 6
        (validated, [4], [6], "FINISHED"),  # the final validation at 6
        (lagging, [2], [], "FAILED"),  # the checkpoint of iteration 4 is on disk, MLflow has points up to 2
    ):
        points = [Metric("train/lr", 0.01, 1000 + s, s) for s in lr_steps]
        client.log_batch(p.child.run_id, metrics=points + [Metric("val/mIoU", 50.0, 2000 + s, s) for s in val_steps])
        set_run_status(uri, p.run.run_dir, status)
    _checkpoint(windows.run, 6, finished=True)
    _checkpoint(lagging.run, 4, finished=False)
    _, rows = status_report(spec)
    assert [(r["status"], r["iteration"]) for r in rows] == [
        ("FINISHED", "6/6"),
        ("FINISHED", "6/6"),
        ("FAILED", "4/6"),
    ]


def test_a_store_deleted_mid_sweep_is_not_recreated_and_comes_back_whole(tiny_data: Path, tmp_path: Path) -> None:
    iterations = 4
    path = _spec(
        tmp_path, tiny_data, {"train.seed": [0]}, **{"train.iterations": iterations, "train.checkpoint_every": 2}
    )
    spec = load_spec(path)
    db, away = tmp_path / "mlflow.db", tmp_path / "elsewhere.db"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "experiments", "sweep", str(path), "--executor", "local"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = deadline = time.monotonic()
    deadline += 300
    while not list((tmp_path / "runs" / spec.name).glob(f"*/{CHECKPOINT_NAME}")):  # the first flush has landed
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.05)
    shutil.move(db, away)  # the store disappears (for everyone opening its path) while the run trains
    moved = time.monotonic()
    _, err = sweep.communicate(timeout=600)
    print(f"sweep: first checkpoint after {moved - started:.1f} s, done after {time.monotonic() - started:.1f} s")
    assert sweep.returncode == 0, err[-2000:]
    assert not db.exists(), "the job recreated the store"
    [run_dir] = [p.parent for p in (tmp_path / "runs" / spec.name).glob("*/config.yaml")]
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / spec.name / ".submitit").glob("*_log.err"))
    assert f"tracking: tracking store {db} has disappeared (deleted or moved?); it is not recreated" in logs
    assert json.loads((run_dir / STATUS_FILE).read_text())["status"] == "FINISHED"  # the record has it all
    assert (run_dir / METRICS_FILE).read_text().count('"key": "train/loss"') == iterations

    for call in (lambda: status_report(spec), lambda: sync(spec)):  # a clear line, and no empty store made
        with pytest.raises(ExperimentsError, match=f"^tracking store {db} does not exist"):
            call()
        assert not db.exists()
    with pytest.raises(ExperimentsError, match=f"record MLflow runs that sqlite:///{db} does not hold"):
        submit(spec, "local")
    assert not db.exists()

    # another store where the old one was (another process: this one never opens it): sync mirrors nothing into it
    impostor = "from experiments.store import ensure_experiment; from experiments.cli import main; import sys; "
    impostor += "ensure_experiment(sys.argv[2], 'other'); sys.exit(main(['sync', sys.argv[1]]))"
    out = subprocess.run(
        [sys.executable, "-c", impostor, str(path), spec.tracking_uri], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2, out.stderr[-2000:]
    refusal = (
        "(another or a lost store?): `experiments sync SPEC --rebuild` makes the runs again from the run directories"
    )
    assert out.stderr.strip().splitlines()[-1].endswith(refusal), out.stderr[-2000:]
    db.unlink()
    shutil.move(away, db)  # the store comes back: sync mirrors what the job recorded meanwhile
    (synced, _), run_id = sync(spec), read_job(run_dir).run_id
    assert [(name, done.run_id) for name, done in synced][1:] == [(run_dir.name, run_id)]
    assert synced[0][0] == "parent" and synced[0][1].status == "FINISHED"  # the parent's end, recorded meanwhile
    client = MlflowClient(spec.tracking_uri)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, iterations + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
