"""Runs left SCHEDULED or RUNNING while nothing trains them, set right from their run directories.

That happens when a job died without a word (kill -9, node failure), when the store was away or read-only while a
job ended (its record holds its last points and its end, MLflow does not yet), or when a sweep stopped between
creating its runs and submitting them. ``status``, ``sync`` and ``sweep`` call ``reconcile`` before they report or
submit. What remains here is what no run directory can say by itself: whether the job that wrote it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeplab.checkpoint import CHECKPOINT_NAME, checkpoint_progress
from deeplab.lease import LEASE_NAME, current_holder
from deeplab.tracking import read_status, write_status
from experiments.jobs import alive, read_job
from experiments.spec import RunSpec
from experiments.store import ChildRun, mirror_run, read_run_id, update_parent, write_run_id

STUCK = ("SCHEDULED", "RUNNING")


@dataclass(frozen=True)
class Reconciled:
    config_hash: str
    run_id: str
    status: str  # the run's status now
    line: str  # what was found and done, for the user


def reconcile(
    uri: str, runs: list[RunSpec], children: dict[str, ChildRun], *, resubmitting: bool = False
) -> list[Reconciled]:
    """Set right every run left SCHEDULED/RUNNING by a job that is gone.

    A run whose job is alive, or whose run directory a live process holds, is left alone, as is one whose job
    cannot be checked from here. Otherwise its record is mirrored first (what the job wrote while the store was
    away); a record that ended the run ends it in MLflow; else a finished checkpoint makes it FINISHED, anything
    else FAILED with the iteration it reached. With ``resubmitting`` (a sweep about to submit) runs never
    submitted and unfinished runs are only mirrored: the sweep submits them again."""

    def recorded(r: RunSpec) -> str:
        return (read_status(r.run_dir) or {}).get("status", children[r.config_hash].status)

    stuck = [
        r for r in runs if r.config_hash in children and {children[r.config_hash].status, recorded(r)} & set(STUCK)
    ]
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
        if read_run_id(r.run_dir) is None:  # a run directory from before records named their MLflow run
            write_run_id(r.run_dir, child.run_id, uri)
        progress = checkpoint_progress(r.run_dir / CHECKPOINT_NAME)
        finished = progress is not None and progress[1] is not None
        status = was = recorded(r)
        why = None  # the failure_reason recorded with a status decided here
        if status not in STUCK:  # the job ended the run in its record; MLflow missed it
            line = f"{r.name}: was {child.status}, {reason}; its run directory ended it {status}"
        elif finished:
            status, line = "FINISHED", f"{r.name}: was {child.status}, {reason}; its checkpoint is finished: FINISHED"
        elif resubmitting:
            line = f"{r.name}: {reason}; its run directory mirrored before it is resubmitted"
        elif record is None and progress is None:
            status, why, line = "KILLED", reason, f"{r.name}: was {child.status}, {reason}: KILLED"
        else:
            status, reached = "FAILED", f"iteration {progress[0] if progress else 0}/{r.config.train.iterations}"
            why, line = (
                f"{reason} at {reached}; `experiments sweep` resumes it",
                f"{r.name}: was {child.status}, {reason} at {reached}: FAILED",
            )
        if status != was:
            write_status(r.run_dir, status, why)
        sent = mirror_run(uri, r.run_dir).points
        if status in STUCK and not sent:  # resubmitting, and nothing was waiting to be mirrored
            continue
        line += f" ({sent} points mirrored)" if sent else ""
        done.append(Reconciled(r.config_hash, child.run_id, status, line))
    if any(d.status not in STUCK for d in done) and runs:  # the parent ends once none of its children is going
        update_parent(uri, runs[0].run_dir.parent)
    return done
