"""What runs inside a submitit job: the engine with an MLflow tracker, checkpoint-and-requeue on preemption.

On SIGUSR2 (time-out or preemption) submitit calls ``checkpoint()``, which resubmits this same callable; the
requeued attempt resumes from the run directory's latest periodic checkpoint and replays the iterations since,
bit for bit (the engine's resume is exact and the tracker drops points already stored).
"""

from __future__ import annotations

import os
import platform
import signal
import sys
from pathlib import Path
from typing import Any

import submitit
import torch

from deeplab.config import from_dict
from deeplab.engine import train
from deeplab.errors import DeeplabError
from deeplab.lease import LeaseHeld
from experiments.mlflow_tracker import MlflowTracker
from experiments.store import close_parent_if_done


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
    ) -> None:
        self.config, self.run_dir, self.tracking_uri, self.run_id = config, run_dir, tracking_uri, run_id
        self.threads, self.tags = threads, tags or {}

    def _environment(self) -> int:
        """Export torchrun-style variables for multi-task jobs; returns this process's rank."""
        env = submitit.JobEnvironment() if os.environ.get("SUBMITIT_EXECUTOR") else None
        if env is not None and env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if self.threads:
            torch.set_num_threads(self.threads)
        return int(os.environ.get("RANK", "0"))

    def __call__(self) -> dict[str, float]:
        shield_requeue_from_sigterm()  # submitit installed its handlers before calling us
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
            tracker = MlflowTracker(self.tracking_uri, self.run_id, spool_dir=run_dir, start_tags=start_tags)
        try:
            result = train(cfg, run_dir, tracker, progress="lines")
        except LeaseHeld:  # another process trains this run: its MLflow run is not ours to touch
            raise
        except Exception as err:  # diverged, bad data, or a bug: the run says FAILED and why, then the job fails
            if tracker is not None:
                reason = str(err) if isinstance(err, DeeplabError) else f"{err.__class__.__name__}: {err}"
                tracker.close("FAILED", reason)
                self._close_parent()
            raise
        if tracker is not None:  # interrupted (preempted or timed out): stays RUNNING, the requeued job resumes
            tracker.close("FINISHED" if result.status == "finished" else None)
            if result.status == "finished":
                self._close_parent()
        return result.metrics

    def _close_parent(self) -> None:
        """The last child to end ends the sweep's parent run (bookkeeping: a tracking hiccup here is only logged)."""
        try:
            close_parent_if_done(self.tracking_uri, self.run_id)
        except Exception as err:  # the run's own result is already recorded (or spooled)
            print(f"warning: could not update the sweep's parent run: {err}", file=sys.stderr, flush=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job: it resumes from the run directory's latest checkpoint."""
        return submitit.helpers.DelayedSubmission(self)
