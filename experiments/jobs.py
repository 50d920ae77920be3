"""Where each run's job is: a record in its run directory, whether that job still lives, and the sweep's lock."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from deeplab.lease import Holder, Lease, LeaseHeld, acquire
from deeplab.outputs import missing_dirs, remove_empty_dirs
from experiments.errors import ExperimentsError

JOB_ID_FILE = "job_id"
SWEEP_LOCK = ".sweep.lock"


@dataclass(frozen=True)
class JobRecord:
    """The job a run was last given: ``slurm`` (job id), ``local`` (the job's pid on ``host``) or ``queued`` (waiting
    in the queue of the local sweep process ``pid`` on ``host``)."""

    kind: str
    job_id: str
    run_id: str = ""  # the MLflow run the job reports to
    host: str = ""
    boot_id: str = ""
    pid: int = 0
    pid_start: int | None = None
    submitted: float = 0.0

    @classmethod
    def local(cls, kind: str, job_id: str, run_id: str, pid: int) -> JobRecord:
        h = Holder.local(pid)
        return cls(kind, job_id, run_id, h.host, h.boot_id, pid, h.pid_start, time.time())

    def describe(self) -> str:
        if self.kind == "queued":
            return f"queued in the local sweep {self.host}:{self.pid}"
        if self.kind == "debug":
            return f"debug job {self.job_id} in {self.host}:{self.pid}"
        return f"{self.kind} job {self.job_id}" + (f" on {self.host}" if self.kind == "local" else "")


def write_job(run_dir: Path, record: JobRecord, name: str = JOB_ID_FILE) -> None:
    """Replace the run's job record (or the folder's record ``name``) in one step (a reader sees the old record or
    the new one)."""
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(record)) + "\n")
    os.replace(tmp, run_dir / name)


def read_job(run_dir: Path, name: str = JOB_ID_FILE) -> JobRecord | None:
    """The run's job record (also the older one-line ``KIND JOB_ID`` form), else None."""
    try:
        text = (run_dir / name).read_text().strip()
    except OSError:
        return None
    try:
        return JobRecord(**json.loads(text))
    except (ValueError, TypeError):
        kind, _, job_id = text.partition(" ")
        return JobRecord(kind, job_id) if kind in ("slurm", "local") and job_id else None


def slurm_alive(job_ids: list[str]) -> dict[str, bool] | str:
    """Which of the jobs squeue still lists (pending, running, requeued…); a reason string when it cannot say."""
    if not job_ids:
        return {}
    if not shutil.which("squeue"):
        return "squeue is not on PATH"
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"squeue failed ({err.__class__.__name__})"
    if out.returncode != 0 and "Invalid job id" not in out.stderr:  # that one: none of them is known any more
        return f"squeue failed: {out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else out.returncode}"
    listed = {line.split("|")[0] for line in out.stdout.split()}
    return {job: job in listed for job in job_ids}


def alive(records: dict[str, JobRecord]) -> dict[str, bool | None]:
    """Per key: True while its job lives, False once it has ended, None when that cannot be told from here
    (a local job of another host, or squeue not answering)."""
    slurm = slurm_alive(sorted({r.job_id for r in records.values() if r.kind == "slurm"}))
    out: dict[str, bool | None] = {}
    for key, r in records.items():
        if r.kind == "slurm":
            out[key] = slurm.get(r.job_id) if isinstance(slurm, dict) else None
        elif not r.host:  # a record of the older one-line form: which process it named cannot be told apart
            out[key] = False
        else:
            holder = Holder(r.host, r.boot_id, r.pid, r.pid_start)
            out[key] = holder.alive() if holder.on_this_host() else None
    return out


@contextlib.contextmanager
def sweep_lock(folder: Path, timeout_s: float = 600.0) -> Iterator[Lease]:
    """Hold the sweep's lock (``folder/.sweep.lock``) while runs are checked, created and submitted; another sweep
    of the same spec waits for it here, then finds the runs submitted. Folders the lock created are removed again
    when the sweep fails before writing into them (a full disk at the start leaves nothing behind)."""
    made = missing_dirs(folder)
    deadline, said = time.monotonic() + timeout_s, False
    while True:
        try:
            lease = acquire(folder / SWEEP_LOCK, "sweep")
            break
        except LeaseHeld as err:
            if time.monotonic() > deadline:
                raise ExperimentsError(f"{err}: gave up waiting after {timeout_s:.0f} s") from None
            if not said:
                print(f"waiting: {err}", file=sys.stderr, flush=True)
                said = True
            time.sleep(0.25)
    try:
        yield lease
    except BaseException:
        lease.release()
        remove_empty_dirs(made)
        raise
    lease.release()


def sweep_busy(folder: Path) -> str | None:
    """Who is submitting this sweep right now (a live holder of its lock), else None."""
    from deeplab.lease import current_holder

    holder = current_holder(folder / SWEEP_LOCK)
    return holder.describe() if holder is not None else None
