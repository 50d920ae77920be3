"""Submitting a sweep: expand, skip runs finished or being trained, create MLflow runs once, submit one job array."""

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
from deeplab.lease import LEASE_NAME, current_holder
from experiments.axes import axis_tags
from experiments.code_version import git_state
from experiments.errors import ExperimentsError
from experiments.follow import failure_line, run_local, wait_for
from experiments.jobs import JOB_ID_FILE, JobRecord, alive, read_job, sweep_lock, write_job
from experiments.launch import RunJob
from experiments.reconcile import reconcile
from experiments.resources import memory_lines
from experiments.spec import RunSpec, SweepSpec, expand_grid
from experiments.store import (
    ChildRun,
    NewChild,
    check_reachable,
    child_runs,
    ensure_child_runs,
    ensure_experiment,
    ensure_parent_run,
    find_experiment,
    parent_run,
    read_run_id,
    redact,
    resolve_tracking_uri,
    set_run_status,
    sqlite_path,
    update_parent,
)

REPO = Path(__file__).resolve().parents[1]
__all__ = ["JOB_ID_FILE", "make_executor", "plan", "submit"]


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
        slurm_signal_delay_s=s.signal_lead_s,
        # srun inherits --cpus-per-task from sbatch on some Slurm releases only (not 22.05-23.x): say it again
        slurm_srun_args=[f"--cpus-per-task={s.cpus_per_task}"],
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


def plan(spec: SweepSpec, tracking_uri: str, dry_run: bool, runs: list[RunSpec] | None = None) -> list[Planned]:
    """Create (or find) the parent and child runs of the grid's cells (``runs``: expanded already); nothing is
    created in a dry run."""
    runs = expand_grid(spec) if runs is None else runs
    if dry_run:
        return [Planned(r, None) for r in runs]
    experiment_id = ensure_experiment(tracking_uri, spec.experiment)
    git = git_state(REPO)
    folder = spec.runs_root / spec.name
    parent = ensure_parent_run(
        tracking_uri,
        experiment_id,
        spec.name,
        tags={**git, "sweep.spec": str(spec.path)},
        folder=folder,
        grid=spec.grid,
    )
    cells = [
        NewChild(
            r.config_hash,
            r.name,
            flatten(to_dict(r.config)),
            {"sweep.name": spec.name, **git, **axis_tags(r.config, spec.grid)},
            r.run_dir,
        )
        for r in runs
    ]
    children = ensure_child_runs(tracking_uri, experiment_id, parent, cells)
    return [Planned(r, children[r.config_hash]) for r in runs]


def print_table(planned: list[Planned]) -> None:
    print(f"{'hash':<13} {'run':<44} {'status':<10} run dir")
    for p in planned:
        status = p.child.status if p.child else "-"
        print(f"{p.run.config_hash:<13} {p.run.name:<44} {status:<10} {p.run.run_dir}")


def check_runs_root(folder: Path) -> None:
    """The sweep's run folder can be written, before any MLflow run exists (the sweep's lock creates it)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ExperimentsError(f"runs_root: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExperimentsError(f"runs_root: {existing} is not writable")


def recorded_run_id(run_dir: Path) -> str | None:
    """The MLflow run a run directory mirrors into (its record's, else its job's from before records)."""
    return read_run_id(run_dir) or ((rec := read_job(run_dir)) and rec.run_id) or None


def check_same_store(spec: SweepSpec, uri: str, runs: list[RunSpec]) -> None:
    """Run directories that record MLflow runs this store does not hold (it was deleted, moved or replaced) are
    not given new runs in it: their history is elsewhere (restore the store), or they start over when moved away."""
    records = {r.config_hash: (r, run_id) for r in runs if (run_id := recorded_run_id(r.run_dir))}
    if not records:
        return
    db = sqlite_path(uri)
    children = {}
    if db is None or db.is_file():
        experiment_id = find_experiment(uri, spec.experiment)
        parent = parent_run(uri, experiment_id, spec.name) if experiment_id else None
        children = child_runs(uri, experiment_id, parent) if parent else {}
    lost = [r for h, (r, run_id) in records.items() if h not in children or children[h].run_id != run_id]
    if lost:
        raise ExperimentsError(
            f"{len(lost)} run dir(s) of sweep {spec.name}, e.g. {lost[0].run_dir}, record MLflow runs that "
            f"{redact(uri)} does not hold (was the store deleted, moved or replaced?): restore it and run "
            f"`experiments sync`, or rebuild it from the run dirs (`experiments sync SPEC --rebuild`)"
        )


def _unstarted(planned: list[Planned]) -> tuple[list[Planned], list[str]]:
    """The unfinished runs nothing is training or about to train; and one line per run skipped for that."""
    open_runs = [p for p in planned if p.child.status != "FINISHED"]
    records = {p.run.config_hash: rec for p in open_runs if (rec := read_job(p.run.run_dir)) is not None}
    living = alive(records)
    todo, skipped = [], []
    for p in open_runs:
        record, holder = records.get(p.run.config_hash), current_holder(p.run.run_dir / LEASE_NAME)
        state = living.get(p.run.config_hash, False)
        if holder is not None:
            skipped.append(f"skipped {p.run.name}: its run dir is held by {holder.describe()}")
        elif record is not None and state:
            skipped.append(f"skipped {p.run.name}: {record.describe()} is alive")
        elif record is not None and state is None:
            skipped.append(f"skipped {p.run.name}: cannot tell from here whether {record.describe()} lives")
        else:
            todo.append(p)
    return todo, skipped


def submit(
    spec: SweepSpec,
    executor_name: str = "auto",
    *,
    dry_run: bool = False,
    wait: bool = False,
    tracking_uri: str | None = None,
    check_data: bool = True,
) -> list[submitit.Job]:
    """Submit every unfinished run of the sweep that no live job is training, as one job array. Real datasets are
    decoded once first (``check_data``), before any MLflow run is created.

    The check, the submission and the job records happen under the sweep's lock: two sweeps of one spec submit
    each run once (the second finds the first's jobs alive). Runs left SCHEDULED/RUNNING by dead jobs are
    reconciled first; runs created here but not submitted (the submission failed) end KILLED with the reason."""
    kind = choose_executor(executor_name)
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    check_reachable(uri)
    folder = spec.runs_root / spec.name
    check_runs_root(folder)  # created by the lock, once the data check passed: a refused sweep leaves nothing
    if dry_run:
        planned = plan(spec, uri, dry_run)
        print_table(planned)
        print("\n" + "\n".join(memory_lines([p.run for p in planned], spec.slurm.nodes * spec.slurm.tasks_per_node)))
        print(f"dry run: {len(planned)} runs, nothing submitted")
        return []
    runs = expand_grid(spec)
    if check_data:
        check_datasets(runs, workers=min(8, available_cpus()))
    with sweep_lock(folder):
        check_same_store(spec, uri, runs)
        planned = plan(spec, uri, dry_run, runs)
        children = {p.run.config_hash: p.child for p in planned}
        for fixed in reconcile(uri, [p.run for p in planned], children, resubmitting=True):
            print(f"reconciled {fixed.line}")
            children[fixed.config_hash].status = fixed.status
        print_table(planned)
        todo, skipped = _unstarted(planned)
        for line in skipped:
            print(line)
        if not todo:
            finished = sum(p.child.status == "FINISHED" for p in planned)
            print("every run is FINISHED: nothing to submit" if not skipped else
                  f"nothing to submit: {finished} FINISHED, {len(skipped)} skipped")  # fmt: skip
            return []
        started = time.time()
        try:
            jobs = _fan_out(spec, kind, uri, todo)
        except BaseException as err:  # the runs set SCHEDULED for this submission must not stay so
            why = failure_line(str(err)) or err.__class__.__name__
            for p in todo:
                if (rec := read_job(p.run.run_dir)) is None or rec.submitted < started:
                    set_run_status(uri, p.run.run_dir, "KILLED", f"not submitted: {why}")
            if isinstance(err, Exception) and not isinstance(err, ExperimentsError):
                raise ExperimentsError(f"submission failed: {why[:300]}") from None
            raise
    names = [p.run.name for p in todo]
    if kind == "local":  # LocalExecutor starts everything at once: keep `parallelism` jobs running
        return run_local(jobs, names, [p.run.run_dir for p in todo], [p.child.run_id for p in todo],
                         spec.local.parallelism)  # fmt: skip
    print(f"submitted {len(jobs)} runs ({kind}); follow with: python -m experiments status {spec.path}", flush=True)
    if wait:
        wait_for(jobs, names)
    return jobs


def _fan_out(spec: SweepSpec, kind: str, uri: str, todo: list[Planned]) -> Any:
    """Data made once, runs SCHEDULED, then the SLURM job array submitted (or the local jobs queued) and each
    run's job recorded in its run directory."""
    seen = set()
    for p in todo:  # synthetic datasets are generated once here, not raced by the jobs
        data = p.run.config.data
        if data.synthetic is not None and (data.root, repr(data.synthetic)) not in seen:
            seen.add((data.root, repr(data.synthetic)))
            ensure_synthetic(Path(data.root), data.synthetic)
    for p in todo:
        if p.child.status != "SCHEDULED":  # a resubmitted run waits for its new job
            set_run_status(uri, p.run.run_dir, "SCHEDULED")
    update_parent(uri, spec.runs_root / spec.name)  # RUNNING again: its children are about to run
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
            device=spec.slurm.device if kind == "slurm" else None,
        )
        for p in todo
    ]
    if kind == "local":  # started one by one by run_local; until then the queue belongs to this process
        for p in todo:
            write_job(p.run.run_dir, JobRecord.local("queued", "", p.child.run_id, os.getpid()))
        return executor, jobs_in
    jobs = executor.submit_array(jobs_in)
    for p, job in zip(todo, jobs, strict=True):
        if kind == "debug":  # runs inside this process, when its result is asked for
            record = JobRecord.local("debug", str(job.job_id), p.child.run_id, os.getpid())
        else:
            record = JobRecord(kind, str(job.job_id), p.child.run_id, submitted=time.time())
        write_job(p.run.run_dir, record)
    return jobs
