"""A job's rendezvous comes from SLURM, never from what the submitting shell exported (sbatch passes the user's
environment on): torchrun variables left in a shell neither kill the job nor put two jobs on one port."""

from __future__ import annotations

import os

import pytest

from experiments.launch import RunJob, rendezvous_port

JOB = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}
SHELL = {"MASTER_PORT": "29500", "MASTER_ADDR": "login1", "RANK": "5", "WORLD_SIZE": "9", "LOCAL_RANK": "5"}


@pytest.mark.parametrize("attempt", [0, 1])
def test_the_rendezvous_is_the_jobs_whatever_the_shell_exported(monkeypatch: pytest.MonkeyPatch, attempt: int) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for key, value in {**JOB, **SHELL, "SLURM_RESTART_COUNT": str(attempt)}.items():
        monkeypatch.setenv(key, value)
    rank = RunJob({}, "run", "sqlite:///x.db", "id")._environment()
    assert rank == 1
    assert {k: os.environ[k] for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "MASTER_ADDR": "gpu07",
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }
    assert os.environ["MASTER_PORT"] == str(rendezvous_port("4242", attempt)) != SHELL["MASTER_PORT"]


def test_ports_differ_between_jobs_and_between_attempts_of_one_job() -> None:
    ports = {rendezvous_port(str(job), attempt) for job in range(1000, 1400) for attempt in range(3)}
    assert len(ports) == 1200 and all(20000 <= p < 60000 for p in ports)
