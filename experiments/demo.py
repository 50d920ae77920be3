"""The demo's sweep on the embedded default: synthetic data → tiny res50/res101 sweep, with a progress line every
30 s. ``python -m analysis demo`` (``make demo``) runs it between the study's designs and the report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from submitit.core.utils import JobPaths

from experiments.jobs import read_job
from experiments.spec import RunSpec, SweepSpec, expand_grid, load_spec
from experiments.store import default_tracking_uri, ensure_experiment
from experiments.sweep import submit

DEMO_SPEC = Path(__file__).resolve().parent / "sweeps" / "demo_synthetic.yaml"
STUDY_SPEC = Path(__file__).resolve().parent / "sweeps" / "r50_vs_r101_cityscapes.yaml"  # the real question
PROGRESS_EVERY_S = 30.0


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and any(s in ("idle", "mixed") for s in out.stdout.split())


def _job_progress(run: RunSpec, folder: Path) -> str:
    """Where one run is, from its job's log: "N/M" iterations, "done", "queued" or "starting"."""
    job = read_job(run.run_dir)
    if job is None or job.kind == "queued":
        return "queued"
    log = JobPaths(folder, job_id=job.job_id, task_id=0).stdout
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            tail = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "queued"
    if "finished: val mIoU" in tail:
        return "done"
    steps = re.findall(r"^iter (\d+/\d+)", tail, re.MULTILINE)
    return steps[-1] if steps else "starting"


def _progress(spec: SweepSpec, start: float, stop: threading.Event) -> None:
    """Every PROGRESS_EVERY_S, one line: runs done, and the iteration of each running one (from the job logs;
    MLflow only sees the points at each checkpoint's flush)."""
    runs, folder = expand_grid(spec), spec.runs_root / spec.name / ".submitit"
    while not stop.wait(PROGRESS_EVERY_S):
        states = {run.name: _job_progress(run, folder) for run in runs}
        done = sum(state == "done" for state in states.values())
        active = [f"{name} {state}" for name, state in states.items() if state not in ("done", "queued")]
        elapsed = time.strftime("%M:%S", time.gmtime(time.perf_counter() - start))
        print(f"  [{elapsed}] {done}/{len(runs)} done; " + (", ".join(active) or "waiting"), flush=True)


@dataclass
class DemoSweep:
    spec: SweepSpec
    tracking_uri: str
    experiment_id: str


def run_demo_sweep(workdir: Path, executor: str = "auto") -> DemoSweep:
    """Run the demo sweep into ``workdir`` (data, runs, mlflow.db, artifacts) and wait for every run to end."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(DEMO_SPEC)
    spec.overrides = {**spec.overrides, "data.root": str(workdir / "data" / "synthetic")}
    spec.runs_root = workdir / "runs"
    uri = default_tracking_uri(workdir)
    # artifacts beside the database, not in ./mlruns of whatever directory the demo was started from
    eid = ensure_experiment(uri, spec.experiment, artifact_location=(workdir / "artifacts").as_uri())
    if executor == "auto":
        executor = "slurm" if _cluster_up() else "local"
    if executor == "slurm":  # sbatch passes this on: one torch thread per allocated CPU, not one per core
        os.environ.setdefault("OMP_NUM_THREADS", str(spec.slurm.cpus_per_task))
    print(f"demo: {len(expand_grid(spec))} runs on the {executor} executor; tracking {uri}", flush=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_progress, args=(spec, time.perf_counter(), stop), daemon=True)
    watcher.start()
    try:
        submit(spec, executor, wait=True, tracking_uri=uri)
    finally:
        stop.set()
    return DemoSweep(spec, uri, eid)
