"""The local SLURM cluster is real (jobs, 2-task GPU jobs, arrays, accounting, requeue), and so are the sbatch
scripts users run on it: train.sbatch trains with two ranks and requeues itself on the pre-time-out signal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from tiny import REPO, TINY, tiny_overrides

from deeplab.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from conftest import LocalCluster

SCRIPTS = REPO / "slurm"
PROFILE_KEYS = {"partition", "account", "qos", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem"}
PROFILE_KEYS |= {"time", "constraint", "array_parallelism", "max_requeues", "device", "signal_lead_s"}


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _alloc_tres(job: str) -> str:
    return subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "AllocTRES%80"], capture_output=True, text=True).stdout


def _squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


@pytest.mark.slurm
def test_job_completes_and_sacct_sees_it(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch("--wrap", "echo hello from $SLURM_JOB_ID on $SLURM_JOB_PARTITION", cwd=tmp_path)
    assert slurm_cluster.wait(job) == "COMPLETED"
    assert (tmp_path / f"slurm-{job}.out").read_text().strip() == f"hello from {job} on {slurm_cluster.partition}"
    assert f"JobId={job} done" in (slurm_cluster.state_dir / "log" / "slurmctld.log").read_text()


@pytest.mark.slurm
def test_two_tasks_share_two_gpus(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    script = "srun bash -c 'echo rank=$SLURM_PROCID local=$SLURM_LOCALID of=$SLURM_NTASKS gpus=$SLURM_GPUS_ON_NODE'"
    job = slurm_cluster.sbatch("--gres=gpu:2", "--ntasks-per-node=2", "--wrap", script, cwd=tmp_path)
    assert slurm_cluster.wait(job) == "COMPLETED"
    lines = sorted((tmp_path / f"slurm-{job}.out").read_text().splitlines())
    assert lines == ["rank=0 local=0 of=2 gpus=2", "rank=1 local=1 of=2 gpus=2"]
    # the controller said COMPLETED; slurmdbd's record of the allocation can arrive later: wait for it
    _wait_for(lambda: "gres/gpu=2" in _alloc_tres(job), "sacct's record of the job's TRES", timeout=120)


@pytest.mark.slurm
def test_job_array_runs_every_task(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    array = slurm_cluster.sbatch("--array=0-2%2", "--wrap", "echo task $SLURM_ARRAY_TASK_ID", cwd=tmp_path)
    assert [slurm_cluster.wait(f"{array}_{i}") for i in range(3)] == ["COMPLETED"] * 3
    outputs = {(tmp_path / f"slurm-{array}_{i}.out").read_text().strip() for i in range(3)}
    assert outputs == {"task 0", "task 1", "task 2"}


@pytest.mark.slurm
def test_requeued_job_runs_again_with_restart_count(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "attempts.txt"
    job = slurm_cluster.sbatch(
        "--requeue", "--wrap", f"echo restart=${{SLURM_RESTART_COUNT:-0}} >> {out}; sleep 300", cwd=tmp_path
    )
    try:
        _wait_for(lambda: out.exists(), "the first attempt")
        subprocess.run(["scontrol", "requeue", job], check=True)
        _wait_for(lambda: _squeue_state(job) == "PENDING", "the requeued job to be pending")
        slurm_cluster.release_requeued(job)  # skip the ~120 s hold
        _wait_for(lambda: out.read_text().split() == ["restart=0", "restart=1"], "the second attempt")
    finally:
        subprocess.run(["scancel", job], check=True)
    assert slurm_cluster.wait(job) == "CANCELLED"


def _train_args(data: Path, run_dir: Path, **extra: object) -> list[str]:
    overrides = tiny_overrides(data, **extra)
    return [str(TINY), str(run_dir), *[a for o in overrides for a in ("--set", o)]]


def _submit_script(cluster: LocalCluster, script: str, args: list[str], cwd: Path, **env: str) -> str:
    # DEVICE=cpu: the local cluster's GPUs are fake (slurm/local-cluster/README.md says so to its users); the rest
    # is what a user's shell may hold (a torchrun session): sbatch passes it on, the scripts must not use it
    shell = {"MASTER_PORT": "29500", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}
    return cluster.sbatch(
        str(SCRIPTS / script), *args, cwd=cwd, env={"PYTHON": sys.executable, "DEVICE": "cpu", **shell, **env}
    )


@pytest.mark.slurm
@pytest.mark.slow
def test_train_then_evaluate_sbatch_with_two_ranks(
    slurm_cluster: LocalCluster, tiny_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job = _submit_script(slurm_cluster, "train.sbatch", _train_args(tiny_data, run_dir), tmp_path)
    assert slurm_cluster.wait(job) == "COMPLETED", (tmp_path / f"deeplab-train-{job}.out").read_text()
    log = (tmp_path / f"deeplab-train-{job}.out").read_text()
    port = re.search(rf"job {job} attempt 1 on {slurm_cluster.node}, 2 ranks, rendezvous \S+:(\d+)", log).group(1)
    assert port != "29500", log  # the job's port, not the one the submitting shell exported
    assert len(re.findall(rf"deeplab: rank [01]/2 .* backend gloo, rendezvous \S+:{port}, \d+ data workers", log)) == 2
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 6

    out = tmp_path / "eval"
    args = [str(run_dir / "checkpoint.pt"), str(out), "--set", f"data.root={tiny_data}"]
    job = _submit_script(slurm_cluster, "evaluate.sbatch", args, tmp_path, SCALES="0.75,1")
    assert slurm_cluster.wait(job) == "COMPLETED", (tmp_path / f"deeplab-eval-{job}.out").read_text()
    result = json.loads((out / "eval.json").read_text())
    assert (result["scales"], result["flip"], result["iteration"]) == ([0.75, 1.0], True, 6)
    assert len(list((out / "predictions").glob("*_pred_labelIds.png"))) == 2  # both val images, over two ranks


@pytest.mark.slurm
@pytest.mark.slow
def test_train_sbatch_checkpoints_and_requeues_on_the_time_limit_signal(
    slurm_cluster: LocalCluster, tiny_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = _train_args(tiny_data, run_dir, **{"train.iterations": 12, "train.eval_every": 0})
    job = _submit_script(slurm_cluster, "train.sbatch", args, tmp_path)
    log = tmp_path / f"deeplab-train-{job}.out"
    metrics = run_dir / "metrics.jsonl"
    try:
        _wait_for(lambda: metrics.exists() and '"train/loss"' in metrics.read_text(), "the first iteration")
        # what slurmctld does 120 s before the limit (--signal=B:USR1@120): signal the batch shell only
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
        ended = ("COMPLETED", "FAILED", "CANCELLED")
        _wait_for(lambda: "requeueing job" in log.read_text() or slurm_cluster.state(job) in ended, "the requeue")
        assert "requeueing job" in log.read_text(), log.read_text()
        _wait_for(lambda: _squeue_state(job) == "PENDING", "the requeued job to be pending")
        slurm_cluster.release_requeued(job)
        assert slurm_cluster.wait(job) == "COMPLETED", log.read_text()
    finally:
        subprocess.run(["scancel", job], check=False)
        print(log.read_text() if log.exists() else f"no {log}")  # shown by pytest when the test fails
    text = log.read_text()
    assert f"job {job} attempt 1 " in text and f"job {job} attempt 2 " in text
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 12
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"train/loss"' in line]
    assert steps == list(range(1, 13))  # resumed where the checkpoint stopped: every step exactly once


def test_sbatch_scripts_refuse_missing_arguments() -> None:
    for script in ("train.sbatch", "evaluate.sbatch"):
        done = subprocess.run(
            ["bash", str(SCRIPTS / script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
        )
        assert done.returncode == 2 and done.stderr.startswith(f"usage: sbatch slurm/{script} "), done.stderr


def test_shell_scripts_parse_and_stop_by_pid_files_only() -> None:
    scripts = [*(SCRIPTS / "local-cluster").glob("*.sh"), *SCRIPTS.glob("*.sbatch")]
    assert len(scripts) == 5
    for script in scripts:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
        text = script.read_text()
        assert not re.search(r"\b(pkill|killall|pgrep)\b|kill\s+%", text), f"{script} kills by name"
        assert text.startswith("#!/usr/bin/env bash\n") and "set -" in text, script
    if shutil.which("shellcheck"):
        assert subprocess.run(["shellcheck", "-S", "warning", *map(str, scripts)]).returncode == 0


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.fixture
def repo_copy() -> Iterator[Path]:
    """The Makefile and the cluster scripts in a directory the unprivileged user can read (pytest's tmp is 0700)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to run the scripts as another user (setpriv)")
    root = Path(tempfile.mkdtemp(prefix="cluster-up."))
    shutil.copy(REPO / "Makefile", root)
    shutil.copytree(SCRIPTS / "local-cluster", root / "slurm" / "local-cluster")
    for path in (root, *root.rglob("*")):
        path.chmod(0o755)
    yield root
    shutil.rmtree(root)


def _as_nobody(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run([*NOBODY, *argv], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_cluster_up_as_another_user_fails_in_one_line_and_touches_nothing(repo_copy: Path) -> None:
    state = repo_copy / "state"
    for argv in (["make", "-s", "cluster-up"], ["bash", "slurm/local-cluster/start.sh"]):
        done = _as_nobody(argv, repo_copy, {"SLURM_LOCAL_DIR": str(state)})
        ours = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
        assert done.returncode != 0 and ours == [
            "local-cluster: error: starting the cluster needs root (sudo make cluster-up, or sudo bash "
            "slurm/local-cluster/start.sh)"
        ], done.stderr
        assert done.stdout == "" and not state.exists()
    # a fresh machine (simulated: a dpkg-query that knows no package, since these packages are installed here)
    fake = repo_copy / "fakebin"
    fake.mkdir(mode=0o755)
    (fake / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (fake / "dpkg-query").chmod(0o755)
    done = _as_nobody(["bash", "slurm/local-cluster/install.sh"], repo_copy, {"PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "local-cluster: error: installing slurm-wlm slurmdbd munge mariadb-server needs root "
        "(sudo bash slurm/local-cluster/install.sh)"
    ], done.stderr


@pytest.mark.slurm
def test_cluster_up_on_a_running_cluster_says_so_to_anyone(slurm_cluster: LocalCluster, repo_copy: Path) -> None:
    state = slurm_cluster.state_dir
    if _as_nobody(["test", "-r", str(state / "etc" / "slurm.conf")], repo_copy, {}).returncode != 0:
        pytest.skip(f"{state} is not readable by other users")
    done = _as_nobody(["make", "-s", "cluster-up"], repo_copy, {"SLURM_LOCAL_DIR": str(state)})
    assert done.returncode == 0 and done.stdout.startswith("local-cluster: already running: partition "), done
    assert done.stderr == ""


def _profile(name: str) -> dict:
    return yaml.safe_load((SCRIPTS / "profiles" / f"{name}.yaml").read_text())


def test_profiles_are_executor_sections_with_every_key() -> None:
    names = sorted(p.stem for p in (SCRIPTS / "profiles").glob("*.yaml"))
    assert names == ["example-2gpu", "local"]
    for name in names:
        profile = _profile(name)
        assert list(profile) == ["executor"] and list(profile["executor"]) == ["slurm"], name
        slurm = profile["executor"]["slurm"]
        assert set(slurm) == PROFILE_KEYS, (name, set(slurm) ^ PROFILE_KEYS)
        assert slurm["gpus_per_node"] == slurm["tasks_per_node"] == 2, name
        assert isinstance(slurm["time"], int) and re.fullmatch(r"\d+[MG]", slurm["mem"]), name


@pytest.mark.slurm
def test_local_profile_fits_the_local_cluster(slurm_cluster: LocalCluster) -> None:
    executor = _profile("local")["executor"]["slurm"]
    assert executor["partition"] == slurm_cluster.partition
    node = subprocess.run(["scontrol", "show", "node", slurm_cluster.node], capture_output=True, text=True).stdout
    assert f"gpu:{executor['gpus_per_node']}" in node
    cpus = int(re.search(r"CPUTot=(\d+)", node).group(1))
    assert executor["tasks_per_node"] * executor["cpus_per_task"] <= cpus
