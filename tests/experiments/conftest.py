"""The local SLURM cluster (real daemons started by slurm/local-cluster/start.sh) as a session fixture."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}


def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True, env=env).stdout


@dataclass(frozen=True)
class LocalCluster:
    """What tests need to know about the running cluster, plus submit/wait helpers on the real commands."""

    partition: str
    node: str
    state_dir: Path  # the private directory of start.sh (logs in state_dir / "log")

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit with ``sbatch --parsable`` in ``cwd`` (``slurm-<id>.out`` lands there) and ``env`` added to the
        job's environment; returns the job id."""
        environment = {**os.environ, **(env or {})}
        return _run("sbatch", "--parsable", f"--chdir={cwd}", *args, env=environment).strip().split(";")[0]

    def state(self, job_id: str) -> str:
        """The state of a job or array task ``<id>_<i>`` (PENDING, RUNNING, COMPLETED…; "" if unknown).

        The controller's answer first: slurmdbd records arrive late, so right after a requeue sacct can still
        show the previous attempt's end state. sacct only once the controller has forgotten the job (MinJobAge).
        """
        for argv in (
            ("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"),
            ("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"),
        ):
            try:
                words = _run(*argv).split()
            except subprocess.SubprocessError:  # an unknown id (squeue) or a busy daemon: try the next, poll again
                continue
            if words:
                return words[0]
        return ""

    def release_requeued(self, job_id: str, timeout: float = 120) -> None:
        """Start a requeued (PENDING) job now instead of after SLURM's ~120 s hold. Released too early, it fails
        with "Job credential revoked": slurmd revokes the previous attempt's credential and refuses any credential
        made in the same second (it compares whole seconds). So wait for the previous attempt's end to be recorded
        (sacct's REQUEUED row), then for a later second, then release."""
        deadline = time.monotonic() + timeout
        argv = ("sacct", "-n", "-X", "--duplicates", "-j", job_id, "-o", "State")
        while "REQUEUED" not in _run(*argv):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: no REQUEUED record after {timeout} s")
            time.sleep(0.5)
        time.sleep(2.0 - time.time() % 1.0)  # into a second after the revocation's
        _run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def wait(self, job_id: str, timeout: float = 300) -> str:
        """Poll sacct until the job reaches a final state and return it (jobs of other tests may queue first)."""
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)) not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {state or 'unknown'} after {timeout} s")
            time.sleep(0.5)
        return state


def _find_cluster() -> LocalCluster | None:
    if not Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).exists():
        return None  # SLURM commands would look the controller up in DNS first: slow here, and pointless
    try:
        nodes = _run("sinfo", "-h", "-N", "-o", "%P|%N|%T").split()
        config = _run("scontrol", "show", "config")
    except (OSError, subprocess.SubprocessError):
        return None
    up = [n.split("|") for n in nodes if n.split("|")[2] in ("idle", "mixed", "allocated", "completing")]
    state_lines = [line for line in config.splitlines() if line.startswith("StateSaveLocation")]
    if not up or not state_lines:
        return None
    partition, node, _ = up[0]
    return LocalCluster(partition.rstrip("*"), node, Path(state_lines[0].split("=", 1)[1].strip()).parent)


@pytest.fixture(scope="session")
def slurm_cluster() -> LocalCluster:
    """The running local cluster; skipped when it is down, except in CI (which starts it first) where it fails."""
    cluster = _find_cluster()
    if cluster is None:
        message = "the local SLURM cluster is not up: run `sudo make cluster-up` (slurm/local-cluster/start.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return cluster
