"""Following submitted jobs to their end: local jobs a few at a time, SLURM jobs with ``--wait``."""

from __future__ import annotations

import time
from pathlib import Path

import submitit

from experiments.errors import ExperimentsError
from experiments.jobs import JobRecord, write_job
from experiments.launch import RunJob
from experiments.store import run_status


class RunsFailed(ExperimentsError):
    """Some of the runs a local sweep ran failed (each said why in its line above)."""


def run_local(
    queued: tuple[submitit.Executor, list[RunJob]],
    names: list[str],
    run_dirs: list[Path],
    run_ids: list[str],
    parallelism: int,
) -> list[submitit.Job]:
    """Run local jobs, at most ``parallelism`` at a time, until all end."""
    executor, jobs_in = queued
    queue = list(zip(names, jobs_in, run_dirs, run_ids, strict=True))
    running: dict[str, submitit.Job] = {}
    started: list[submitit.Job] = []
    failed: list[str] = []
    print(f"running {len(queue)} runs locally, {parallelism} at a time", flush=True)
    while queue or running:
        while queue and len(running) < parallelism:
            name, job_in, run_dir, run_id = queue.pop(0)
            if run_status(job_in.tracking_uri, run_id) == "KILLED":  # `experiments cancel` while it waited
                print(f"  skip  {name}: cancelled", flush=True)
                continue
            job = executor.submit(job_in)
            write_job(run_dir, JobRecord.local("local", str(job.job_id), run_id, int(job.job_id)))
            running[name] = job
            started.append(job)
            print(f"  start {name}", flush=True)
        for name, job in list(running.items()):
            if job.done():
                del running[name]
                _report(name, job, failed)
        time.sleep(0.5)
    if failed:
        raise RunsFailed(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their MLflow runs and logs)")
    return started


def _report(name: str, job: submitit.Job, failed: list[str]) -> None:
    try:
        metrics = job.results()[0]  # rank 0's; `result()` refuses multi-task (DDP) jobs
        if "val/mIoU" not in metrics:  # stopped by a signal (e.g. `experiments cancel`) after its checkpoint
            print(f"  stopped {name}: checkpointed before its last iteration", flush=True)
            return
        print(f"  done  {name}: val mIoU {metrics['val/mIoU']:.2f}", flush=True)
    except Exception as err:  # the job's own error, in one line
        failed.append(name)
        print(f"  FAILED {name}: {failure_line(str(err))[:300]}", flush=True)


def failure_line(text: str) -> str:
    """The exception line of a submitit failure (its text ends with a traceback, then log paths)."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if any(line.startswith("You can check full logs") for line in lines):
        lines = lines[: next(i for i, line in enumerate(lines) if line.startswith("You can check full logs"))]
    lines = [line for line in lines if line and not set(line) <= {"-"}]
    return lines[-1] if lines else text.strip()


def wait_for(jobs: list[submitit.Job], names: list[str]) -> None:
    """Block until every job ends, printing one line per finished job; raise if any failed."""
    pending = dict(zip(names, jobs, strict=True))
    failed = []
    while pending:
        for name, job in list(pending.items()):
            if job.done():
                del pending[name]
                _report(name, job, failed)
        time.sleep(1)
    if failed:
        raise ExperimentsError(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their MLflow runs and logs)")
