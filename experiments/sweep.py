"""Submitting a sweep: expand, skip finished runs, create MLflow runs once, submit one job array."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from deeplab.config import flatten, to_dict
from deeplab.data.check import available_cpus, check_split
from deeplab.data.synth import ensure_synthetic
from experiments.errors import ExperimentsError
from experiments.launch import RunJob, git_state
from experiments.spec import RunSpec, SweepSpec, expand_grid
from experiments.store import (
    ChildRun,
    NewChild,
    check_reachable,
    ensure_child_runs,
    ensure_experiment,
    ensure_parent_run,
    reopen_parent,
    resolve_tracking_uri,
)

REPO = Path(__file__).resolve().parents[1]
JOB_ID_FILE = "job_id"


def choose_executor(name: str) -> str:
    """``auto`` = slurm when sbatch is on PATH, else local."""
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if name == "slurm" and not shutil.which("sbatch"):
        raise ExperimentsError("--executor slurm: sbatch is not on PATH (no SLURM here); use --executor local")
    return name


def make_executor(kind: str, spec: SweepSpec, folder: Path) -> submitit.Executor:
    """A submitit executor whose job folder (logs, pickles) is private to the user."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=7 * 24 * 60, tasks_per_node=1)
        return executor
    s = spec.slurm
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_requeues)
    extra: dict[str, Any] = {"slurm_gres": f"gpu:{s.gpus_per_node}"} if s.gpus_per_node else {}
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            extra[f"slurm_{key}"] = getattr(s, key)
    executor.update_parameters(
        name=spec.name,
        nodes=s.nodes,
        tasks_per_node=s.tasks_per_node,
        cpus_per_task=s.cpus_per_task,
        slurm_mem=s.mem,
        timeout_min=s.time,
        slurm_array_parallelism=s.array_parallelism,
        **extra,
    )
    return executor


@dataclass
class Planned:
    run: RunSpec
    child: ChildRun | None  # None in a dry run


def check_datasets(runs: list[RunSpec], workers: int = 8) -> None:
    """Decode every image and label of each real (not synthetic) dataset the runs read, once, before fan-out: a
    broken file fails here in one report instead of failing every job one by one."""
    splits = {(r.config.data.root, s) for r in runs if r.config.data.synthetic is None for s in _splits(r)}
    bad = [p for root, split in sorted(splits) for p in check_split(root, split, workers=workers).problems]
    for problem in bad:
        print(f"  {problem}", flush=True)
    if bad:
        more = f"and {len(bad) - 1} more bad file(s), listed above; " if len(bad) > 1 else ""
        raise ExperimentsError(f"data check: {bad[0]} ({more}nothing submitted; --no-data-check skips this check)")


def _splits(run: RunSpec) -> tuple[str, str]:
    return run.config.data.train_split, run.config.data.val_split


def plan(spec: SweepSpec, tracking_uri: str, dry_run: bool, check_data: bool = True) -> list[Planned]:
    """Create (or find) the parent and child runs; nothing is created in a dry run. The data is checked first."""
    runs = expand_grid(spec)
    if dry_run:
        return [Planned(r, None) for r in runs]
    if check_data:
        check_datasets(runs, workers=min(8, available_cpus()))
    experiment_id = ensure_experiment(tracking_uri, spec.experiment)
    git = git_state(REPO)
    parent = ensure_parent_run(
        tracking_uri,
        experiment_id,
        spec.name,
        params={f"grid.{k}": v for k, v in spec.grid.items()} | {"spec": str(spec.path)},
        tags=git,
    )
    tags = {"sweep.name": spec.name, **git}
    cells = [NewChild(r.config_hash, r.name, flatten(to_dict(r.config)), tags) for r in runs]
    children = ensure_child_runs(tracking_uri, experiment_id, parent, cells)
    return [Planned(r, children[r.config_hash]) for r in runs]


def print_table(planned: list[Planned]) -> None:
    print(f"{'hash':<13} {'run':<28} {'status':<10} run dir")
    for p in planned:
        status = p.child.status if p.child else "-"
        print(f"{p.run.config_hash:<13} {p.run.name:<28} {status:<10} {p.run.run_dir}")


def submit(
    spec: SweepSpec,
    executor_name: str = "auto",
    *,
    dry_run: bool = False,
    wait: bool = False,
    tracking_uri: str | None = None,
    check_data: bool = True,
) -> list[submitit.Job]:
    """Submit every unfinished run of the sweep as one job array; finished runs are skipped. Real datasets are
    decoded once first (``check_data``)."""
    kind = choose_executor(executor_name)
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    check_reachable(uri)
    planned = plan(spec, uri, dry_run, check_data)
    print_table(planned)
    if dry_run:
        print(f"dry run: {len(planned)} runs, nothing submitted")
        return []
    todo = [p for p in planned if p.child.status != "FINISHED"]
    if not todo:
        print("every run is FINISHED: nothing to submit")
        return []
    seen = set()
    for p in todo:  # synthetic datasets are generated once here, not raced by the jobs
        data = p.run.config.data
        if data.synthetic is not None and (data.root, repr(data.synthetic)) not in seen:
            seen.add((data.root, repr(data.synthetic)))
            ensure_synthetic(Path(data.root), data.synthetic)
    reopen_parent(uri, todo[0].child.tags["mlflow.parentRunId"])
    executor = make_executor(kind, spec, spec.runs_root / spec.name / ".submitit")
    threads = spec.local.threads_per_job or max(1, (os.cpu_count() or 1) // spec.local.parallelism)
    jobs_in = [
        RunJob(
            to_dict(p.run.config),
            str(p.run.run_dir),
            uri,
            p.child.run_id,
            threads=threads if kind != "slurm" else 0,
            tags={"config_hash": p.run.config_hash},
        )
        for p in todo
    ]
    for p in todo:
        p.run.run_dir.mkdir(parents=True, exist_ok=True)
    names = [p.run.name for p in todo]
    if kind == "local":  # LocalExecutor starts everything at once: keep `parallelism` jobs running
        return run_local(executor, jobs_in, names, [p.run.run_dir for p in todo], spec.local.parallelism)
    jobs = executor.submit_array(jobs_in)
    for p, job in zip(todo, jobs, strict=True):
        (p.run.run_dir / JOB_ID_FILE).write_text(f"{kind} {job.job_id}\n")
    print(f"submitted {len(jobs)} runs ({kind}); follow with: python -m experiments status {spec.path}", flush=True)
    if wait:
        wait_for(jobs, names)
    return jobs


def run_local(
    executor: submitit.Executor, jobs_in: list[RunJob], names: list[str], run_dirs: list[Path], parallelism: int
) -> list[submitit.Job]:
    """Run local jobs, at most ``parallelism`` at a time, until all end."""
    queue = list(zip(names, jobs_in, run_dirs, strict=True))
    running: dict[str, submitit.Job] = {}
    started: list[submitit.Job] = []
    failed: list[str] = []
    print(f"running {len(queue)} runs locally, {parallelism} at a time", flush=True)
    while queue or running:
        while queue and len(running) < parallelism:
            name, job_in, run_dir = queue.pop(0)
            job = executor.submit(job_in)
            (run_dir / JOB_ID_FILE).write_text(f"local {job.job_id}\n")
            running[name] = job
            started.append(job)
            print(f"  start {name}", flush=True)
        for name, job in list(running.items()):
            if job.done():
                del running[name]
                _report(name, job, failed)
        time.sleep(0.5)
    if failed:
        raise ExperimentsError(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their MLflow runs and logs)")
    return started


def _report(name: str, job: submitit.Job, failed: list[str]) -> None:
    try:
        metrics = job.results()[0]  # rank 0's; `result()` refuses multi-task (DDP) jobs
        print(f"  done  {name}: val mIoU {100 * metrics.get('val/mIoU', float('nan')):.2f}", flush=True)
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
