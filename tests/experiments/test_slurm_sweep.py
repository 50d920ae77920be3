"""Sweeps on the real local SLURM cluster, end to end: a job array ends with every MLflow run FINISHED and every
step logged once; a finished sweep resubmits nothing; a 2-task job trains as two gloo DDP ranks; a preempted run
is requeued, resumes in the same MLflow run and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from tiny import REPO, TINY

from deeplab.checkpoint import load_checkpoint
from deeplab.engine import train
from experiments.jobs import read_job
from experiments.spec import SweepSpec, expand_grid, load_spec
from experiments.sweep import submit

if TYPE_CHECKING:
    from conftest import LocalCluster

TINY_SWEEP = REPO / "experiments" / "sweeps" / "tiny_synthetic.yaml"
THREADS = "1"  # jobs and the in-process reference train with the same thread count (bit-identical float sums)


def _write_spec(
    tmp: Path,
    cluster: LocalCluster,
    stem: str,
    *,
    grid: dict[str, list[Any]] | None = None,
    overrides: dict[str, Any] | None = None,
    slurm: dict[str, Any] | None = None,
) -> Path:
    """experiments/sweeps/tiny_synthetic.yaml with its data, runs and MLflow store in ``tmp``, under a fresh name
    (so sacct can tell this sweep's jobs from any other's)."""
    data = yaml.safe_load(TINY_SWEEP.read_text())
    data["name"] = f"{stem}_{uuid.uuid4().hex[:8]}"
    data["base"] = str(TINY)
    data["runs_root"] = str(tmp / "runs")
    data["tracking"] = {"uri": f"sqlite:///{tmp / 'mlflow.db'}"}
    data["grid"] = grid or data["grid"]
    data["overrides"].update({"data.root": str(tmp / "data"), "train.deterministic": True, **(overrides or {})})
    data["executor"]["slurm"].update({"partition": cluster.partition, **(slurm or {})})
    path = tmp / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# what a user's shell may have exported (a torchrun session, a tutorial): sbatch passes it on to the jobs, which
# must take their rendezvous from SLURM all the same
SHELL_NOISE = {"MASTER_PORT": "29500", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}


def _env(shell_noise: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "OMP_NUM_THREADS": THREADS, **(SHELL_NOISE if shell_noise else {})}


def _cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=timeout)


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _sweep_jobs(name: str) -> list[str]:
    """Every job (array task) sacct and squeue know under this job name."""
    sacct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", "2020-01-01", "--name", name, "-o", "JobID"],
        capture_output=True,
        text=True,
        check=True,
    )
    squeue = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, check=True)
    return sorted(set(sacct.stdout.split()) | set(squeue.stdout.split()))


def _squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _children(spec: SweepSpec) -> dict[str, Run]:
    """The sweep's child runs by config hash."""
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`sweep.name` = '" + spec.name + "'")
    return {r.data.tags["config_hash"]: r for r in runs if r.data.tags.get("sweep.role") != "parent"}


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    """Steps of a metric, sorted, duplicates kept (== range(1, n+1) means each step exactly once)."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _job_ids(spec: SweepSpec) -> list[str]:
    return [read_job(r.run_dir).job_id for r in expand_grid(spec)]


def _logs(spec: SweepSpec, tail: int = 3000) -> str:
    folder = spec.runs_root / spec.name / ".submitit"
    return "\n".join(f"== {p.name}\n{p.read_text()[-tail:]}" for p in sorted(folder.glob("*_log.*")))


def _submit_and_wait(spec: SweepSpec) -> subprocess.CompletedProcess:
    """`experiments sweep SPEC --executor slurm --wait`; if it fails, none of its jobs stays queued."""
    out = None
    try:
        out = _cli("sweep", str(spec.path), "--executor", "slurm", "--wait")
    finally:
        if out is None or out.returncode != 0:
            for job in _sweep_jobs(spec.name):
                subprocess.run(["scancel", job], check=False)
    return out


@pytest.fixture(scope="module")
def finished_sweep(
    slurm_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SweepSpec, subprocess.CompletedProcess]:
    """The 2×2 tiny sweep (res50/res101 × 2 seeds) submitted as one job array and waited for."""
    path = _write_spec(tmp_path_factory.mktemp("sweep"), slurm_cluster, "tiny")
    spec = load_spec(path)
    return spec, _submit_and_wait(spec)


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_job_array_finishes_every_run_with_every_step_once(
    finished_sweep: tuple[SweepSpec, subprocess.CompletedProcess], slurm_cluster: LocalCluster
) -> None:
    spec, out = finished_sweep
    assert out.returncode == 0, out.stdout + out.stderr[-3000:] + _logs(spec)
    assert "submitted 4 runs (slurm)" in out.stdout
    cells = expand_grid(spec)
    assert sorted(line.split()[1] for line in out.stdout.splitlines() if line.startswith("  done ")) == sorted(
        f"{c.name}:" for c in cells
    )
    jobs = _job_ids(spec)
    array = {j.split("_")[0] for j in jobs}
    assert len(array) == 1 and sorted(jobs) == [f"{next(iter(array))}_{i}" for i in range(4)]  # one job array
    assert [slurm_cluster.wait(j) for j in jobs] == ["COMPLETED"] * 4

    client = MlflowClient(spec.tracking_uri)
    children = _children(spec)
    assert sorted(children) == sorted(c.config_hash for c in cells)
    for cell in cells:
        run = children[cell.config_hash]
        run_id = run.info.run_id
        assert run.info.status == "FINISHED", (cell.name, run.data.tags.get("failure_reason"))
        assert run.info.run_name == cell.name
        assert run.data.params["model.backbone"] == cell.config.model.backbone
        assert run.data.params["train.seed"] == str(cell.config.train.seed)
        assert run.data.tags["slurm.array_job_id"] in array and run.data.tags["restart_count"] == "0"
        assert _steps(client, run_id, "train/loss") == [1, 2, 3, 4, 5, 6]
        assert _steps(client, run_id, "train/lr") == [1, 2, 3, 4, 5, 6]
        assert _steps(client, run_id, "val/mIoU") == [3, 6]
        assert all(0.0 <= m.value <= 100.0 for m in client.get_metric_history(run_id, "val/mIoU"))
        assert load_checkpoint(cell.run_dir / "checkpoint.pt")["iteration"] == 6
    assert len({r.data.tags["slurm.array_task_id"] for r in children.values()}) == 4
    parent = client.get_run(next(iter(children.values())).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"  # closed by the last child to end


@pytest.mark.slurm
@pytest.mark.slow
def test_resubmitting_a_finished_sweep_submits_nothing(
    finished_sweep: tuple[SweepSpec, subprocess.CompletedProcess],
) -> None:
    spec, first = finished_sweep
    assert first.returncode == 0, first.stderr[-2000:]
    jobs_before, ids_before = _sweep_jobs(spec.name), _job_ids(spec)
    assert len(jobs_before) == 4
    out = _cli("sweep", str(spec.path), "--executor", "slurm")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "every run is FINISHED: nothing to submit"
    assert "submitted" not in out.stdout
    assert [line.split()[2] for line in out.stdout.splitlines()[1:5]] == ["FINISHED"] * 4
    assert _sweep_jobs(spec.name) == jobs_before  # sacct and squeue: no new job
    assert _job_ids(spec) == ids_before
    assert len(_children(spec)) == 4  # and no new MLflow run


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_job_trains_as_two_ddp_ranks(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    path = _write_spec(
        tmp_path,
        slurm_cluster,
        "ddp",
        grid={"train.seed": [0]},
        slurm={"gpus_per_node": 2, "tasks_per_node": 2, "cpus_per_task": 1},
    )
    spec = load_spec(path)
    out = _submit_and_wait(spec)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:] + _logs(spec)
    assert "  done  seed=0: val mIoU " in out.stdout
    [job] = _job_ids(spec)
    assert slurm_cluster.wait(job) == "COMPLETED"

    def tres() -> str:  # slurmdbd's record can arrive after the controller's COMPLETED: wait for it
        return subprocess.run(
            ["sacct", "-n", "-X", "-j", job, "-o", "AllocTRES%80"], capture_output=True, text=True
        ).stdout

    _wait_for(lambda: "gres/gpu=2" in tres(), "sacct's record of the job's TRES", timeout=120)
    [run] = _children(spec).values()
    assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
    assert run.data.params["info.world_size"] == "2"  # what the engine saw
    assert run.data.params["info.device"] == "cpu"  # fake GPUs: gloo on CPU
    client = MlflowClient(spec.tracking_uri)
    assert _steps(client, run.info.run_id, "train/loss") == [1, 2, 3, 4, 5, 6]  # rank 0 alone reports
    assert _steps(client, run.info.run_id, "val/mIoU") == [3, 6]
    folder = spec.runs_root / spec.name / ".submitit"
    rank1 = (folder / f"{job}_1_log.out").read_text()
    assert "global_rank=1(2)" in rank1 and "Job completed successfully" in rank1  # rank 1 ran and ended well
    # each rank says where it runs; the rendezvous is the job's, not the submitting shell's MASTER_PORT
    rank1 += (folder / f"{job}_1_log.err").read_text()  # the engine's start line goes to stderr
    line = re.search(r"deeplab: rank 1/2 \(local 1\) on .*", rank1).group(0)
    port = int(re.search(r"rendezvous \S+:(\d+)", line).group(1))
    assert "device cpu, backend gloo" in line and port != int(SHELL_NOISE["MASTER_PORT"]), line
    script = next(folder.glob(f"{job}_submission.sh")).read_text()  # srun is told the CPUs again, lead 300 s
    assert "--cpus-per-task=1" in script.split("srun", 1)[1] and "--signal=USR2@300" in script, script


_REFERENCE: dict[str, Any] = {}  # the uninterrupted run both signal tests compare with, trained once


def _reference(cell: Any, folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    if cell.config_hash not in _REFERENCE:
        threads = torch.get_num_threads()
        torch.set_num_threads(int(THREADS))
        try:
            result = train(cell.config, folder / "reference", None, progress="lines")
        finally:
            torch.set_num_threads(threads)
        assert result.status == "finished"
        _REFERENCE[cell.config_hash] = (
            load_checkpoint(folder / "reference" / "checkpoint.pt")["model"],
            result.metrics,
        )
    return _REFERENCE[cell.config_hash]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("how", ["preempted", "timed-out"])
def test_a_signalled_run_checkpoints_its_iteration_requeues_once_and_ends_bit_identical(
    slurm_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Real DataLoader workers (2 per rank) receive the signals too; no periodic checkpoint exists, so the
    resumed attempt can only start from the one the signal made at the current iteration."""
    iterations = 40
    path = _write_spec(
        tmp_path,
        slurm_cluster,
        "signal",
        grid={"train.seed": [0]},
        overrides={
            "train.iterations": iterations,
            "train.eval_every": 20,
            "train.checkpoint_every": 0,
            "data.num_workers": 2,
        },
        slurm={"cpus_per_task": 2},
    )
    spec = load_spec(path)
    [cell] = expand_grid(spec)
    for key, value in _env(shell_noise=False).items():  # the reference trains in this process
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(REPO)
    [job] = submit(spec, "slurm")
    client = MlflowClient(spec.tracking_uri)
    run_id = _children(spec)[cell.config_hash].info.run_id
    try:
        _wait_for(
            lambda: re.search(r"iter [3-9]/40", _logs(spec, tail=10**7)) is not None, "the third iteration", timeout=900
        )
        assert slurm_cluster.state(job.job_id) == "RUNNING"
        job._interrupt(timeout=how == "timed-out")  # preempted: SIGTERM then USR2 to every process; timed out: USR2
        _wait_for(
            lambda: (
                _squeue_state(job.job_id) == "PENDING" or slurm_cluster.state(job.job_id) in ("FAILED", "COMPLETED")
            ),
            "the requeue",
            timeout=300,
        )
        assert _squeue_state(job.job_id) == "PENDING", _logs(spec)
        slurm_cluster.release_requeued(job.job_id)  # skip the hold
        state = slurm_cluster.wait(job.job_id, timeout=900)
    finally:
        subprocess.run(["scancel", job.job_id], check=False)  # no-op once it has ended
    logs = _logs(spec, tail=10**7)
    assert state == "COMPLETED", logs[-6000:]
    assert logs.count("Requeued job") == 1, logs  # rank 0's main process alone, once; no worker requeued
    [stopped] = re.findall(r"stop requested: checkpoint at iteration (\d+)", logs)
    first_attempt = logs[: logs.index("stop requested")]
    assert int(stopped) == max(int(i) for i in re.findall(r"iter (\d+)/40", first_attempt)), logs  # its iteration

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
    assert int(run.data.tags["restart_count"]) == 1  # the second attempt ran with SLURM_RESTART_COUNT set
    assert len(_children(spec)) == 1  # the same MLflow run, not a new one
    assert _steps(client, run_id, "train/loss") == list(range(1, iterations + 1))  # each step exactly once
    assert _steps(client, run_id, "val/mIoU") == [20, 40]  # a validation a stop skipped runs after the resume
    resumed = load_checkpoint(cell.run_dir / "checkpoint.pt")
    assert resumed["iteration"] == iterations

    expected, metrics = _reference(cell, tmp_path)
    assert resumed["model"].keys() == expected.keys()
    different = [k for k in expected if not torch.equal(resumed["model"][k], expected[k])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"
    assert resumed["final_metrics"] == metrics


@pytest.mark.slurm
@pytest.mark.slow
def test_a_sequential_sweep_queues_an_advance_job_that_analyses_the_look_and_submits_the_next(
    slurm_cluster: LocalCluster, tmp_path: Path
) -> None:
    """`sweep` of a sequential spec submits the first look and a CPU job with afterany on its array; that job
    records the look on the parent run, submits the next look's seeds and queues the next advance job."""
    from experiments.study import SEEDS_TAG, STATE_TAG, advance_job, look_tag

    path = _write_spec(tmp_path, slurm_cluster, "study", grid={"model.backbone": ["resnet50", "resnet101"],
                                                               "train.seed": [0, 1, 2]})  # fmt: skip
    data = yaml.safe_load(path.read_text())
    data["analysis"] = {"margin": 0.001, "sequential": {"looks": [2, 3]}}  # look 1 cannot close it
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(path)
    folder, second = spec.runs_root / spec.name, None
    try:
        out = _cli("sweep", str(path), "--executor", "slurm")
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        assert "submitted 4 runs (slurm)" in out.stdout
        first = advance_job(folder)
        array = {read_job(r.run_dir).job_id.split("_")[0] for r in expand_grid(spec) if r.config.train.seed < 2}
        assert (
            first is not None and f"queued advance job {first.job_id}: it runs after job(s) {array.pop()}" in out.stdout
        )
        assert slurm_cluster.wait(first.job_id, timeout=600) == "COMPLETED", _logs(spec)
        tags = (
            MlflowClient(spec.tracking_uri)
            .get_run(next(iter(_children(spec).values())).data.tags["mlflow.parentRunId"])
            .data.tags
        )
        assert look_tag(1) in tags and tags[STATE_TAG] == "continue" and tags[SEEDS_TAG] == "3", _logs(spec)
        look2 = [r for r in expand_grid(spec) if r.config.train.seed == 2]
        assert all(read_job(r.run_dir).kind == "slurm" for r in look2)
        second = advance_job(folder)
        assert second.job_id != first.job_id and _squeue_state(second.job_id) == "PENDING"
        status = _cli("status", str(path))
        assert f"advance job {second.job_id} (PENDING)" in status.stdout
    finally:
        cancelled = _cli("cancel", str(path))
    assert cancelled.returncode == 0, cancelled.stderr
    assert second is not None and slurm_cluster.wait(second.job_id, timeout=120) == "CANCELLED"
