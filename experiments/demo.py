"""The main job on the embedded default: synthetic data → tiny res50/res101 sweep → report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from submitit.core.utils import JobPaths

from experiments.jobs import read_job
from experiments.spec import RunSpec, SweepSpec, expand_grid, load_spec
from experiments.store import default_tracking_uri, ensure_experiment, report_parent, run_page_url, runs_page_url
from experiments.sweep import submit

DEMO_SPEC = Path(__file__).resolve().parent / "sweeps" / "demo_synthetic.yaml"
STUDY_SPEC = Path(__file__).resolve().parent / "sweeps" / "r50_vs_r101_cityscapes.yaml"  # the real question
PROGRESS_EVERY_S = 30.0
UI_PORT = 5000
UI = f"http://127.0.0.1:{UI_PORT}"


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


def study_designs(tracking_uri: str, replicates: int | None = None) -> list[str]:
    """`analysis plan`'s fixed-vs-sequential comparison of the shipped study, as lines (about 10 s: building
    the two models for their FLOPs, then 20 000 simulated studies per figure; ``replicates`` to go faster)."""
    from analysis.plan import REPLICATES, format_designs, plan_study

    plan = plan_study(load_spec(STUDY_SPEC), tracking_uri, replicates=replicates or REPLICATES)
    head = f"the study this demo rehearses: python -m analysis plan {STUDY_SPEC.relative_to(STUDY_SPEC.parents[2])}"
    return [head, *(format_designs(plan.designs) if plan.designs else ["  (the spec compares no res50/res101 cell)"])]


def run_demo(workdir: Path, executor: str = "auto") -> int:
    """Run the demo sweep into ``workdir`` (data, runs, mlflow.db, artifacts, report) and say where everything is."""
    start = time.perf_counter()
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
    print("\n".join(study_designs(uri)) + "\n", flush=True)
    print(f"demo: {len(expand_grid(spec))} runs on the {executor} executor; tracking {uri}", flush=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_progress, args=(spec, start, stop), daemon=True)
    watcher.start()
    try:
        submit(spec, executor, wait=True, tracking_uri=uri)
    finally:
        stop.set()
    from analysis.report import write_report

    print("writing the report…", flush=True)
    report = write_report(spec.experiment, uri, workdir / "report")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"report:    {report}  (figures in {report.parent / 'figures'})")
    print(f"           {report.with_suffix('.html')}  (the same, one file with the figures inlined)")
    evidence = report.parent / "evidence" / "report.md"
    print(f"evidence:  {evidence}  (what the seed fork's logs and published pairs say; .html beside it)")
    print(f"notebook:  make notebook (JupyterLab; elsewhere set DEEPLAB_TRACKING_URI={uri})")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}, then")
    # MLflow 3's front page lands in its GenAI view: these open the sweep itself
    print(f"  runs:    {runs_page_url(UI, eid)}")
    parent = report_parent(uri, spec.experiment)
    if parent is not None:
        print(f"  verdict: {run_page_url(UI, *parent)}  (the sweep's parent run)")
        print(f"  report:  {run_page_url(UI, *parent, 'report/report.html')}")
    return 0
