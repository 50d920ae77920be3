"""A SIGTERM that lands while submitit's SIGUSR2 handler runs ``scontrol requeue`` must not kill that child.

CI saw it once (2026-11-27): ``job._interrupt()`` sent SIGTERM then SIGUSR2, slurmd delivered them 4 ms apart in
the other order, the SIGTERM killed ``scontrol requeue``, the job was never requeued and the run failed. Here the
same sequence on real processes: a handler standing in for submitit's spawns a child (``sleep``, for scontrol)
and the job is sent SIGTERM, as slurmd does to every process of the job."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiny import REPO

SCRIPT = """
import os, signal, subprocess, sys, time
from experiments.launch import shield_requeue_from_sigterm

events = []

def requeue(signum, frame):  # submitit's checkpoint_and_try_requeue: run scontrol, which must finish
    child = subprocess.Popen(["sleep", "0.5"])
    time.sleep(0.1)
    os.killpg(0, signal.SIGTERM)  # slurmd signals the whole job: this process and the child
    events.append(f"child {child.wait()}")

signal.signal(signal.SIGTERM, lambda *_: events.append("term"))  # submitit's bypass: log only
signal.signal(signal.SIGUSR2, requeue)
if sys.argv[1] == "shield":
    shield_requeue_from_sigterm()
    shield_requeue_from_sigterm()  # idempotent: a requeued job's second call wraps nothing twice
os.kill(os.getpid(), signal.SIGUSR2)
print(" / ".join(events))
"""


def _run(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # its own process group, so killpg reaches only the script and its child
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize(("mode", "child"), [("bare", "child -15"), ("shield", "child 0")])
def test_the_requeue_child_survives_a_sigterm_to_the_job_only_when_shielded(mode: str, child: str) -> None:
    # bare: the child dies of the SIGTERM (-15) as scontrol did; shielded: it completes. Either way the job
    # itself receives its SIGTERM (torch's threads do not block it, so not necessarily after the handler)
    assert sorted(_run(mode).split(" / ")) == [child, "term"]
