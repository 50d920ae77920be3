"""`status` and `cancel`: the sweep's runs as MLflow and the scheduler see them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from deeplab.tracking import TRAIN_LR, VAL_MIOU
from experiments.spec import SweepSpec, expand_grid
from experiments.store import check_reachable, child_runs, mark_run, resolve_tracking_uri
from experiments.sweep import JOB_ID_FILE


def _job(run_dir: Path) -> tuple[str, str]:
    path = run_dir / JOB_ID_FILE
    if not path.exists():
        return "", ""
    kind, _, job_id = path.read_text().strip().partition(" ")
    return kind, job_id


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


def status_rows(spec: SweepSpec, tracking_uri: str | None = None) -> list[dict[str, object]]:
    """One row per grid cell: MLflow status, scheduler state, iteration reached, latest val mIoU."""
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    check_reachable(uri)  # an unreachable server fails in seconds, not after MLflow's retries
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    children = {}
    if experiment is not None:
        parents = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'parent'")
        if parents:
            children = child_runs(uri, experiment.experiment_id, parents[0].info.run_id)
    runs = expand_grid(spec)
    jobs = {r.config_hash: _job(r.run_dir) for r in runs}
    slurm = _slurm_states([j for kind, j in jobs.values() if kind == "slurm"])
    rows = []
    for r in runs:
        child = children.get(r.config_hash)
        _, job_id = jobs[r.config_hash]
        iteration = 0
        if child is not None and TRAIN_LR in child.metrics:
            iteration = max(m.step for m in client.get_metric_history(child.run_id, TRAIN_LR))
        rows.append(
            {
                "hash": r.config_hash,
                "run": r.name,
                "status": child.status if child else "NOT SUBMITTED",
                "job": f"{job_id} {slurm.get(job_id, '')}".strip() if job_id else "-",
                "iteration": f"{iteration}/{r.config.train.iterations}",
                "val_mIoU": f"{100 * child.metrics[VAL_MIOU]:.2f}" if child and VAL_MIOU in child.metrics else "-",
                "run_id": child.run_id if child else "",
            }
        )
    return rows


def print_status(rows: list[dict[str, object]]) -> None:
    print(f"{'hash':<13} {'run':<28} {'status':<14} {'job':<20} {'iteration':<14} val mIoU")
    for r in rows:
        print(f"{r['hash']:<13} {r['run']:<28} {r['status']:<14} {r['job']:<20} {r['iteration']:<14} {r['val_mIoU']}")


def cancel(spec: SweepSpec, tracking_uri: str | None = None) -> int:
    """scancel the sweep's unfinished SLURM jobs and mark their runs KILLED; returns how many."""
    rows = status_rows(spec, tracking_uri)
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    count = 0
    for r, row in zip(expand_grid(spec), rows, strict=True):
        kind, job_id = _job(r.run_dir)
        if row["status"] in ("FINISHED", "FAILED", "KILLED") or not job_id:
            continue
        if kind == "slurm":
            subprocess.run(["scancel", job_id], check=False)
        if row["run_id"]:
            mark_run(uri, str(row["run_id"]), "KILLED", "cancelled by `experiments cancel`")
        count += 1
    return count
