"""`status` and `cancel`: the sweep's runs as MLflow and the scheduler see them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence

from deeplab.checkpoint import CHECKPOINT_NAME, checkpoint_progress
from deeplab.lease import Holder
from deeplab.tracking import TRAIN_LR, VAL_MIOU, read_status
from experiments.jobs import JobRecord, read_job, sweep_busy
from experiments.reconcile import reconcile
from experiments.spec import RunSpec, SweepSpec, expand_grid
from experiments.store import (
    ChildRun,
    check_reachable,
    child_runs,
    find_experiment,
    gone_reason,
    metric_histories,
    parent_run,
    read_run_id,
    resolve_tracking_uri,
    run_tags,
    set_run_status,
)


def _slurm_states(job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)], capture_output=True, text=True
    )
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job] = state.split()[0] if state else ""
    return states


def status_report(spec: SweepSpec, tracking_uri: str | None = None) -> tuple[list[str], list[dict[str, object]]]:
    """Notes (runs reconciled, a sweep submitting right now) and one row per grid cell: MLflow status, scheduler
    state, iteration reached, latest val mIoU. A missing sqlite store is an error, never created."""
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    check_reachable(uri, must_exist=True)  # an unreachable server fails in seconds, not after MLflow's retries
    experiment_id = find_experiment(uri, spec.experiment)
    parent = parent_run(uri, experiment_id, spec.name) if experiment_id else None
    children = child_runs(uri, experiment_id, parent) if parent else {}
    runs, notes = expand_grid(spec), []
    if spec.sequential is not None:
        runs, notes = _study_runs(spec, uri, parent, children)
    known = {c.run_id for c in children.values()}
    lost = [r for r in runs if (run_id := read_run_id(r.run_dir)) and run_id not in known]
    if lost and (reason := gone_reason(uri, lost[0].run_dir)):  # one line says what happened and why
        notes.append(f"note: {reason} ({len(lost)} run dir(s) so)")
    if busy := sweep_busy(spec.runs_root / spec.name):
        notes.append(f"note: {busy} is submitting this sweep right now; states may change in a moment")
    else:
        for fixed in reconcile(uri, runs, children):
            notes.append(f"reconciled {fixed.line}")
            children[fixed.config_hash].status = fixed.status
    jobs = {r.config_hash: read_job(r.run_dir) for r in runs}
    slurm = _slurm_states([j.job_id for j in jobs.values() if j is not None and j.kind == "slurm"])
    reached = _reached(uri, runs, children)
    rows = []
    for r in runs:
        child, job = children.get(r.config_hash), jobs[r.config_hash]
        shown = "-" if job is None else job.job_id or job.kind  # a queued local run has no job id yet
        if job is not None and job.kind == "slurm":
            shown = f"{shown} {slurm.get(job.job_id, '')}"
        rows.append(
            {
                "hash": r.config_hash,
                "run": r.name,
                "status": child.status if child else _unmirrored(r),
                "job": shown.strip(),
                "iteration": f"{reached[r.config_hash]}/{r.config.train.iterations}",
                "val_mIoU": f"{child.metrics[VAL_MIOU]:.2f}" if child and VAL_MIOU in child.metrics else "-",
                "run_id": child.run_id if child else "",
            }
        )
    return notes, rows


def _reached(uri: str, runs: list[RunSpec], children: dict[str, ChildRun]) -> dict[str, int]:
    """Per run, the iteration it really reached: the furthest of its logged steps (train/lr at each log window,
    val/mIoU at each validation and at its end, which a log window may miss) and its checkpoint's iteration (the
    run directory is the truth: a finished run's checkpoint holds its last iteration; the store may lag behind)."""
    logged = [c.run_id for c in children.values() if TRAIN_LR in c.metrics or VAL_MIOU in c.metrics]
    steps = metric_histories(uri, logged, [TRAIN_LR, VAL_MIOU]).groupby("run_id").step.max().to_dict()
    out = {}
    for r in runs:
        child, saved = children.get(r.config_hash), checkpoint_progress(r.run_dir / CHECKPOINT_NAME)
        out[r.config_hash] = int(max(steps.get(child.run_id, 0) if child else 0, saved[0] if saved else 0))
    return out


def _study_runs(
    spec: SweepSpec, uri: str, parent: str | None, children: dict[str, ChildRun]
) -> tuple[list[RunSpec], list[str]]:
    """A sequential study's runs up to its current look, or as far as runs exist; and where it stands."""
    from experiments.study import advance_job, assess, study_cap, study_seeds, with_seeds

    study = assess(spec, children, run_tags(uri, parent) if parent else {})
    notes = [study.line()]
    queued = advance_job(spec.runs_root / spec.name)
    if queued is not None and study.state == "continue":
        state = _slurm_states([queued.job_id]).get(queued.job_id) or "gone"
        notes.append(f"advance job {queued.job_id} ({state}): runs `experiments advance` when the look's jobs end")
    seeds = [str(s) for s in study_seeds(spec, study_cap(spec))]
    used = {c.tags.get("seed") for c in children.values()}
    shown = max([study.seeds, *(i + 1 for i, s in enumerate(seeds) if s in used)])
    return expand_grid(with_seeds(spec, shown)), notes


def _unmirrored(run: RunSpec) -> str:
    """The status of a run MLflow does not show: its record's, when it has one."""
    recorded = read_status(run.run_dir) if read_run_id(run.run_dir) else None
    return f"{recorded['status']} (not in MLflow)" if recorded else "NOT SUBMITTED"


def status_rows(spec: SweepSpec, tracking_uri: str | None = None) -> list[dict[str, object]]:
    """The rows of ``status_report``."""
    return status_report(spec, tracking_uri)[1]


def print_status(rows: list[dict[str, object]], notes: Sequence[str] = ()) -> None:
    for note in notes:
        print(note)
    print(f"{'hash':<13} {'run':<44} {'status':<14} {'job':<20} {'iteration':<14} val mIoU")
    for r in rows:
        print(f"{r['hash']:<13} {r['run']:<44} {r['status']:<14} {r['job']:<20} {r['iteration']:<14} {r['val_mIoU']}")


def cancel(spec: SweepSpec, tracking_uri: str | None = None) -> int:
    """scancel the sweep's unfinished SLURM jobs and mark their runs KILLED; returns how many. A sequential study
    is marked cancelled and its queued advance job cancelled too: nothing resubmits the runs until a `sweep`."""
    from experiments.study import spec_runs

    rows = {row["hash"]: row for row in status_rows(spec, tracking_uri)}
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    if spec.sequential is not None:
        _cancel_study(spec, uri)
    count = 0
    for r in spec_runs(spec):
        job, row = read_job(r.run_dir), rows.get(r.config_hash)
        if row is None or row["status"] in ("FINISHED", "FAILED", "KILLED") or job is None:
            continue
        if job.kind == "slurm":
            subprocess.run(["scancel", job.job_id], check=False)
        elif job.kind == "local":
            _stop_local(job)
        if row["run_id"]:
            set_run_status(uri, r.run_dir, "KILLED", "cancelled by `experiments cancel`")
        count += 1
    return count


def _stop_local(job: JobRecord) -> None:
    """SIGTERM a local job (it checkpoints at its iteration and ends); a queued run is skipped by its sweep."""
    holder = Holder(job.host, job.boot_id, job.pid, job.pid_start)
    if not holder.on_this_host():
        print(f"warning: cannot stop {job.describe()} from this host; its run is marked KILLED", file=sys.stderr)
    elif holder.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGTERM)


def _cancel_study(spec: SweepSpec, uri: str) -> None:
    import time

    from experiments.store import PARENT_DIR, tag_run
    from experiments.study import CANCELLED_TAG, advance_job

    queued = advance_job(spec.runs_root / spec.name)
    if queued is not None and queued.kind == "slurm" and shutil.which("scancel"):
        subprocess.run(["scancel", queued.job_id], check=False)
    if (record := spec.runs_root / spec.name / PARENT_DIR).is_dir():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
        tag_run(uri, record, {CANCELLED_TAG: f"cancelled by `experiments cancel` at {when}"})
