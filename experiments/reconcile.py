"""Runs that MLflow shows SCHEDULED or RUNNING while nothing trains them, set right from their run directories.

That happens when a job died without a word (kill -9, node failure), when the store was away or read-only while a
job ended (its last points and state wait in the run's spool), or when a sweep stopped between creating its runs
and submitting them. ``status``, ``sync`` and ``sweep`` call ``reconcile`` before they report or submit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deeplab.checkpoint import CHECKPOINT_NAME, checkpoint_progress
from deeplab.lease import LEASE_NAME, current_holder
from experiments.errors import ExperimentsError
from experiments.jobs import alive, read_job
from experiments.mlflow_tracker import SPOOL_NAME, MlflowTracker
from experiments.spec import RunSpec
from experiments.store import ChildRun, close_parent_if_done, mark_run, run_status

STUCK = ("SCHEDULED", "RUNNING")


@dataclass(frozen=True)
class Reconciled:
    config_hash: str
    run_id: str
    status: str  # the run's status now
    line: str  # what was found and done, for the user


def replay_spool(uri: str, run_id: str, run_dir: Path) -> int:
    """Send a run directory's spool (points, then tags and state changes) into its run; returns the points sent."""
    spool = run_dir / SPOOL_NAME
    if not spool.exists():
        return 0
    points = sum(1 for line in spool.read_text().splitlines() if line.strip() and '"event"' not in line)
    MlflowTracker(uri, run_id, spool_dir=run_dir).close(None)  # sends the spool; keeps it if that fails
    if spool.exists():
        raise ExperimentsError(f"{spool}: not replayed into run {run_id} at {uri}; the spool is kept")
    return points


def reconcile(
    uri: str, runs: list[RunSpec], children: dict[str, ChildRun], *, resubmitting: bool = False
) -> list[Reconciled]:
    """Set right every run left SCHEDULED/RUNNING by a job that is gone.

    A run whose job is alive, or whose run directory a live process holds, is left alone, as is one whose job
    cannot be checked from here. Otherwise its spool is replayed; then a finished checkpoint makes it FINISHED,
    anything else FAILED with the iteration it reached. With ``resubmitting`` (a sweep about to submit) runs
    never submitted and unfinished runs are left as they are: the sweep submits them again."""
    stuck = [r for r in runs if r.config_hash in children and children[r.config_hash].status in STUCK]
    records = {r.config_hash: read_job(r.run_dir) for r in stuck}
    if resubmitting:
        stuck = [r for r in stuck if records[r.config_hash] is not None]
    living = alive({r.config_hash: records[r.config_hash] for r in stuck if records[r.config_hash] is not None})
    done: list[Reconciled] = []
    for r in stuck:
        child, record = children[r.config_hash], records[r.config_hash]
        if (record is not None and living[r.config_hash] is not False) or current_holder(r.run_dir / LEASE_NAME):
            continue
        if record is None:
            reason = "never submitted (the command that created it stopped first)"
        elif record.kind == "queued":
            reason = f"queued in a local sweep that has ended ({record.host}:{record.pid})"
        else:
            reason = f"its {record.describe()} has ended"
        progress = checkpoint_progress(r.run_dir / CHECKPOINT_NAME)
        finished = progress is not None and progress[1] is not None
        if resubmitting and not finished and not (r.run_dir / SPOOL_NAME).exists():
            continue
        replayed = replay_spool(uri, child.run_id, r.run_dir)
        note = f" ({replayed} spooled points replayed)" if replayed else ""
        status = run_status(uri, child.run_id)
        if status not in STUCK:  # the spool held the job's own ending
            line = f"{r.name}: was {child.status}, {reason}; its spool ended it {status}{note}"
        elif finished:
            status = "FINISHED"
            mark_run(uri, child.run_id, status)
            line = f"{r.name}: was {child.status}, {reason}; its checkpoint is finished: FINISHED{note}"
        elif resubmitting:
            line = f"{r.name}: {reason}; spooled points replayed before it is resubmitted{note}"
        elif record is None and progress is None:
            status = "KILLED"
            mark_run(uri, child.run_id, status, reason)
            line = f"{r.name}: was {child.status}, {reason}: KILLED{note}"
        else:
            status, reached = "FAILED", f"iteration {progress[0] if progress else 0}/{r.config.train.iterations}"
            mark_run(uri, child.run_id, status, f"{reason} at {reached}; `experiments sweep` resumes it")
            line = f"{r.name}: was {child.status}, {reason} at {reached}: FAILED{note}"
        done.append(Reconciled(r.config_hash, child.run_id, status, line))
    ended = [d for d in done if d.status not in STUCK]
    if ended:  # the parent ends once none of its children is left going
        close_parent_if_done(uri, ended[-1].run_id)
    return done
