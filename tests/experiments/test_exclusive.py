"""Two `experiments sweep` of one spec started together, on a fresh store: each run is submitted and trained once
(local executor and the real SLURM cluster), every step is logged once, neither sweep dies with a traceback; a
submission that fails leaves no run SCHEDULED."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny import REPO, TINY

from experiments.errors import ExperimentsError
from experiments.jobs import read_job
from experiments.spec import SweepSpec, expand_grid, load_spec
from experiments.sweep import submit

if TYPE_CHECKING:
    from conftest import LocalCluster

SMALL = {
    "data.synthetic": {"train": 4, "val": 1, "height": 64, "width": 128, "seed": 0},
    "data.crop_size": [32, 64],
    "data.batch_size_per_gpu": 2,
    "train.iterations": 2,
    "train.eval_every": 0,
    "train.checkpoint_every": 0,
    "train.log_every": 1,
    "schedule.warmup_iters": 1,
    "train.keep_weights": False,
}


def _spec(tmp_path: Path, slurm: dict[str, Any] | None = None) -> SweepSpec:
    spec = {
        "name": f"twice_{uuid.uuid4().hex[:8]}",
        "base": str(TINY),
        "runs_root": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "grid": {"train.seed": [0, 1]},
        "overrides": {**SMALL, "data.root": str(tmp_path / "data")},
        "executor": {"local": {"parallelism": 2, "threads_per_job": 1}, "slurm": slurm or {}},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return load_spec(tmp_path / "spec.yaml")


def _two_sweeps(spec: SweepSpec, *args: str) -> list[subprocess.CompletedProcess]:
    """Both sweeps started at once (a fresh store: they also race to create it)."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "experiments", "sweep", str(spec.path), *args]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [subprocess.CompletedProcess(cmd, 0, *proc.communicate(timeout=900)) for proc in procs]
    for out, proc in zip(outs, procs, strict=True):
        out.returncode = proc.returncode
        assert proc.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr[-3000:]
    return outs


def _each_run_once(spec: SweepSpec) -> None:
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") != "parent"]
    assert len(parents) == 1 and len(children) == len(expand_grid(spec)) == 2  # no run created twice
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == [1, 2]  # trained by one process: every step logged once
        assert run.data.tags["seed"] in ("0", "1") and all(run.data.tags.values())  # short axis tags, none empty


def test_two_local_sweeps_of_one_spec_train_each_run_once(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    outs = _two_sweeps(spec, "--executor", "local")
    started = [line.split()[1] for out in outs for line in out.stdout.splitlines() if line.startswith("  start ")]
    assert sorted(started) == sorted(r.name for r in expand_grid(spec)), [o.stdout for o in outs]
    skipper = next(out for out in outs if "skipped" in out.stdout)
    assert skipper.stdout.strip().splitlines()[-1] == "nothing to submit: 0 FINISHED, 2 skipped"
    for run in expand_grid(spec):
        assert f"skipped {run.name}: " in skipper.stdout
        assert read_job(run.run_dir).kind == "local"
    logs = sorted((spec.runs_root / spec.name / ".submitit").glob("*_0_log.out"))
    assert len(logs) == 2  # two jobs in all, one per run
    _each_run_once(spec)


@pytest.mark.slurm
@pytest.mark.slow
def test_two_slurm_sweeps_of_one_spec_submit_each_run_once(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    slurm = {"partition": slurm_cluster.partition, "gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 1}
    spec = _spec(tmp_path, {**slurm, "mem": "2G", "time": 20, "array_parallelism": 2})
    try:
        outs = _two_sweeps(spec, "--executor", "slurm", "--wait")
    finally:
        jobs = subprocess.run(["squeue", "-h", "-n", spec.name, "-o", "%i"], capture_output=True, text=True)
        for job in jobs.stdout.split():
            subprocess.run(["scancel", job], check=False)
    submitted = [out for out in outs if "submitted 2 runs (slurm)" in out.stdout]
    skipper = next(out for out in outs if out not in submitted)
    assert len(submitted) == 1, [o.stdout for o in outs]
    ids = sorted(read_job(r.run_dir).job_id for r in expand_grid(spec))
    for run, job in zip(expand_grid(spec), ids, strict=True):
        assert f"skipped {run.name}: slurm job {read_job(run.run_dir).job_id} is alive" in skipper.stdout
        assert job.split("_")[0] == ids[0].split("_")[0]
    sacct = ["sacct", "-n", "-X", "-P", "-S", "2020-01-01", "--name", spec.name, "-o", "JobID,State"]
    accounted = subprocess.run(sacct, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(line.split("|")[0] for line in accounted) == ids  # one array of two tasks, nothing else
    _each_run_once(spec)


@pytest.mark.slurm
def test_a_failed_submission_leaves_no_run_scheduled(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"partition": "no_such_partition", "gpus_per_node": 1, "mem": "1G", "time": 5})
    with pytest.raises(ExperimentsError, match="^submission failed: .*partition"):  # sbatch's own reason
        submit(spec, "slurm")
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment).experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep.role") != "parent"]
    assert len(children) == 2 and {r.info.status for r in children} == {"KILLED"}
    assert all(r.data.tags["failure_reason"].startswith("not submitted: ") for r in children)
    assert all(read_job(r.run_dir) is None for r in expand_grid(spec))
