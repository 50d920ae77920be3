"""Processes a job forks behave: job-control signals reach every process of a SLURM step, DataLoader workers
included, and a worker must neither run the main process's handlers (a stop flag, submitit's requeue) nor die of
them; a process forked after deeplab is imported can run torch ops (no OpenMP team left behind at import)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tiny import REPO

SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from tiny import tiny_config
from deeplab.data.loader import build_train_loader
from deeplab.signals import JOB_SIGNALS

log = Path(sys.argv[2])
def handler(signum, frame):  # a launcher's handler: records which process ran it
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {signum}\\n")
for s in JOB_SIGNALS:
    signal.signal(s, handler)
cfg = tiny_config(Path(sys.argv[1]), **{"data.num_workers": 2})
batches = build_train_loader(cfg, 0, 1, 0)
next(batches)
print(os.getpid(), flush=True)
sys.stdin.readline()  # the test signals the workers meanwhile
for _ in range(8):  # the workers still deliver
    next(batches)
print("ok", flush=True)
"""


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_dataloader_workers_ignore_job_signals(tiny_data: Path, tmp_path: Path) -> None:
    log = tmp_path / "handled.txt"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tiny_data), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        main = int(proc.stdout.readline())
        workers = _children(main)
        assert len(workers) >= 2, workers
        for signum in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            for pid in workers:
                os.kill(pid, signum)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"  # a dead persistent worker would have raised in next()
        assert all(Path(f"/proc/{pid}").exists() for pid in workers), "a worker died of a job signal"
    finally:
        proc.kill()
        proc.wait()
    handled = log.read_text().split("\n") if log.exists() else []
    assert not [line for line in handled if line and int(line.split()[0]) != main], handled


FORK_AFTER_IMPORT = """
import multiprocessing, torch
import deeplab.data.loader, deeplab.engine, deeplab.evaluate, deeplab.step
def child():
    a = torch.randn(512, 512)
    torch.mm(a, a)
process = multiprocessing.get_context("fork").Process(target=child)
process.start()
process.join(60)
print(process.exitcode)
"""


def test_a_process_forked_after_importing_deeplab_runs_torch_ops() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # a user's shell
    out = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_IMPORT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "0", out.stderr[-2000:]  # None: the child deadlocked in libgomp
