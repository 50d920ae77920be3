"""What runs inside a submitit job: the engine with an MLflow tracker, checkpoint-and-requeue on preemption.

SIGUSR2 (submitit's time-out and preemption signal, ``--signal=USR2@lead``), SIGTERM and SIGINT ask the engine to
stop: every rank agrees, rank 0 checkpoints the current iteration, and then, when SIGUSR2 came, rank 0's main
process alone runs submitit's own handler (``checkpoint()`` → ``scontrol requeue``), once. The requeued attempt
resumes from that checkpoint bit for bit. DataLoader workers ignore these signals (deeplab.signals).
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import submitit
import torch

from deeplab.config import from_dict
from deeplab.engine import StopFlag, signal_handlers, train
from deeplab.errors import DeeplabError
from deeplab.lease import LeaseHeld
from experiments.mlflow_tracker import MlflowTracker
from experiments.store import update_parent
from experiments.system_metrics import SystemSampler

JOB_LOGS = "logs"  # the run's artifact folder of its jobs' stdout/stderr (submitit's files, one pair per task)


def shield_requeue_from_sigterm() -> None:
    """Block SIGTERM while submitit's SIGUSR2 handler checkpoints and runs ``scontrol requeue``.

    Once slurmctld accepts a requeue (or a preemption sends SIGTERM right behind SIGUSR2, as
    ``job._interrupt()`` and real preemption do) slurmd sends SIGTERM to every process of the job, the
    ``scontrol`` child included. Killed before its RPC lands, it leaves the job unrequeued and the
    CalledProcessError escapes the handler into the training loop. The mask of the thread that forks is
    inherited across fork and exec, so the child finishes; the job's own SIGTERM still arrives (through
    another thread, or when the handler returns) and submitit's handler for it only logs."""
    previous = signal.getsignal(signal.SIGUSR2)
    if not callable(previous) or getattr(previous, "shielded", False):
        return

    def handler(signum: int, frame: Any) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            previous(signum, frame)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    handler.shielded = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGUSR2, handler)


REQUEUE_SIGNAL = signal.SIGUSR2  # submitit's default (SUBMITIT_PREEMPT_SIGNAL): sent `signal_lead_s` before the limit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, REQUEUE_SIGNAL)
LATE_REQUEUE_S = 10.0  # a preemption's SIGUSR2 may trail its SIGTERM: rank 0 waits this long before giving up


def rendezvous_port(job_id: str, attempt: int) -> int:
    """A port of the job and attempt (the train.sbatch formula): two jobs on one node, or a requeued attempt
    beside its predecessor's last processes, do not meet on one port."""
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return 20000 + (number + 7919 * attempt) % 40000


def rendezvous_env(env: submitit.JobEnvironment, job_id: str, attempt: int) -> dict[str, str]:
    """torchrun's variables from the job itself, replacing any that the submitting shell exported (sbatch passes
    the user's environment on)."""
    port = rendezvous_port(job_id, attempt)
    return {
        "MASTER_ADDR": env.hostnames[0],
        "MASTER_PORT": str(port),
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // env.num_nodes),
    }


class RunJob(submitit.helpers.Checkpointable):
    """One grid cell as a submitit job (one task per GPU; the tasks become DDP ranks)."""

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: str,
        tracking_uri: str,
        run_id: str,
        threads: int = 0,
        tags: dict[str, str] | None = None,
        device: str | None = None,
    ) -> None:
        self.config, self.run_dir, self.tracking_uri, self.run_id = config, run_dir, tracking_uri, run_id
        self.threads, self.tags, self.device = threads, tags or {}, device

    def _environment(self) -> int:
        """Export the rendezvous for job processes (not in-process debug runs); returns this process's rank."""
        kind = os.environ.get("SUBMITIT_EXECUTOR")
        if kind in ("slurm", "local"):
            env = submitit.JobEnvironment()
            job_id = os.environ.get("SLURM_JOB_ID") or str(env.job_id)
            os.environ.update(rendezvous_env(env, job_id, int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)))
        if self.threads:
            torch.set_num_threads(self.threads)
        return int(os.environ.get("RANK", "0"))

    def __call__(self) -> dict[str, float]:
        shield_requeue_from_sigterm()  # submitit installed its handlers before calling us
        requeue = signal.getsignal(REQUEUE_SIGNAL)  # submitit's: checkpoint(), scontrol requeue, exit
        rank = self._environment()
        cfg = from_dict(self.config)
        run_dir = Path(self.run_dir)
        tracker = None
        if rank == 0:  # RUNNING, with these tags, once the engine holds the run directory's lease
            start_tags = {
                **self.tags,
                "host": platform.node(),
                "slurm.job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm.array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
                "slurm.array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
                "restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
            }
            system = SystemSampler(gpus=self._gpus(cfg.train.device))
            tracker = MlflowTracker(
                self.tracking_uri, self.run_id, run_dir=run_dir, start_tags=start_tags, system=system
            )

        def failed(reason: str) -> None:  # also FailureWatch's call when another rank failed
            if tracker is not None:
                attach_job_logs(tracker)
                tracker.close("FAILED", reason)
                self._update_parent()

        flag = StopFlag()
        with signal_handlers(flag, STOP_SIGNALS):
            try:
                result = train(
                    cfg, run_dir, tracker, stop=flag, progress="lines", device=self.device, on_peer_failure=failed
                )
            except LeaseHeld:  # another process trains this run: its MLflow run is not ours to touch
                raise
            except Exception as err:  # diverged, bad data, another rank, or a bug: FAILED and why, then the job fails
                failed(str(err) if isinstance(err, DeeplabError) else f"{err.__class__.__name__}: {err}")
                raise
            if result.status == "interrupted":  # checkpointed at the current iteration; stays RUNNING
                if tracker is not None:
                    attach_job_logs(tracker)
                    tracker.close(None)
                    self._update_parent()
                if rank == 0:
                    self._requeue(flag, requeue, failed)
                return result.metrics
        if tracker is not None:
            attach_job_logs(tracker)
            tracker.close("FINISHED")
            self._update_parent()
        return result.metrics

    def _gpus(self, train_device: str) -> int:
        """The GPUs rank 0 samples: those this process sees, unless the run trains on the CPU."""
        device = self.device or train_device
        return torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0

    @staticmethod
    def _requeue(flag: StopFlag, requeue: Any, failed: Any) -> None:
        """Rank 0's main process requeues once, after every rank has checkpointed; not after a plain cancel."""
        if os.environ.get("SLURM_JOB_ID"):
            deadline = time.monotonic() + LATE_REQUEUE_S
            while REQUEUE_SIGNAL not in flag.signals and time.monotonic() < deadline:
                time.sleep(0.1)
        if REQUEUE_SIGNAL not in flag.signals or not callable(requeue):
            return
        try:
            requeue(REQUEUE_SIGNAL, None)  # exits the process once the job is requeued
        except submitit.core.utils.UncompletedJobError as err:  # e.g. timed out more often than max_requeues
            failed(f"not requeued: {err}")
            raise

    def _update_parent(self) -> None:
        """The sweep's cost so far onto its parent run; the last child to end ends it (bookkeeping: a tracking
        hiccup here is only logged)."""
        try:
            update_parent(self.tracking_uri, Path(self.run_dir).parent)
        except Exception as err:  # the run's own result is already recorded in its run directory
            print(f"warning: could not update the sweep's parent run: {err}", file=sys.stderr, flush=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job: it resumes from the checkpoint its engine just wrote."""
        return submitit.helpers.DelayedSubmission(self)


def job_log_files() -> list[Path]:
    """This job's stdout/stderr files as submitit writes them (every task's), when running as a submitit job."""
    if not os.environ.get("SUBMITIT_FOLDER"):
        return []
    env = submitit.JobEnvironment()
    paths = [submitit.core.utils.JobPaths(env.paths.folder, env.job_id, task) for task in range(env.num_tasks)]
    return [p for job in paths for p in (job.stdout, job.stderr) if p.is_file()]


def attach_job_logs(tracker: MlflowTracker) -> None:
    """The job's logs so far into the run's artifacts (``logs/``): at the end, a failure or a requeue. A requeued
    attempt appends to the same files, so the artifact is replaced by the longer file."""
    sys.stdout.flush()
    sys.stderr.flush()
    for path in job_log_files():
        tracker.log_artifact(path, JOB_LOGS)
