"""Job-control signals belong to a job's main processes; every child a job forks ignores them.

SLURM signals every process of a step, DataLoader workers included, and a forked child inherits the parent's
Python handlers (a stop flag, or a launcher's requeue handler that would requeue the job once per worker).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

JOB_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def ignore_job_signals(_worker_id: int = 0) -> None:
    """In a child (a DataLoader's ``worker_init_fn``): ignore job control, then take signals again."""
    for signum in JOB_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, JOB_SIGNALS)


@contextlib.contextmanager
def forking_children() -> Iterator[None]:
    """Block job signals while children are forked, so that none runs the parent's handlers before it ignores
    them (``ignore_job_signals``); the parent receives what arrived meanwhile when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
