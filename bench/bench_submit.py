"""Submitting a 100-run sweep to SLURM: grid expansion, MLflow store set-up (parent + 100 child runs) and one job
array of 100 tasks, through the sweep's own code path (``experiments.sweep.submit`` with the slurm executor) on
the local cluster (slurm/local-cluster/start.sh). Goal: < 5 s. The jobs are cancelled right after (scancel).

Each step is timed by wrapping the functions ``submit`` calls (the real ones, only timed). Interpreter start-up
and imports (what `python -m experiments sweep` pays before any of this) are printed apart.

    python bench/bench_submit.py
"""

from __future__ import annotations

import time

IMPORT_START = time.perf_counter()

import contextlib  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

import experiments.sweep as sweep  # noqa: E402
from experiments.spec import load_spec  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - IMPORT_START
REPO = Path(__file__).resolve().parents[1]
RUNS = 100
GOAL_S = 5.0

# the functions submit() calls, by the phase they belong to
PHASES = {
    "expand_grid": "expand",
    "ensure_experiment": "store setup",
    "ensure_parent_run": "store setup",
    "ensure_child_runs": "store setup",
    "check_same_store": "job checks",
    "reconcile": "job checks",
    "_unstarted": "job checks",
    "git_state": "git state (tags)",
    "ensure_synthetic": "synthetic data",
    "make_executor": "submit",
}
seconds: dict[str, float] = defaultdict(float)


def timed(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tick = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        finally:
            seconds[phase] += time.perf_counter() - tick
        if fn.__name__ == "make_executor":  # the executor's own submission of the job array
            result.submit_array = timed("submit", result.submit_array)
        return result

    return wrapper


def partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()[0].rstrip("*")


def fresh_store_seconds() -> float:
    """MLflow creating a fresh sqlite store (its schema migrations), in a new process as the sweep met it."""
    code = (
        "import sys, time, logging; logging.disable(logging.INFO); from experiments.store import ensure_experiment; "
        "t = time.perf_counter(); ensure_experiment(sys.argv[1], 'scale'); print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory(prefix="bench_submit_fresh_") as scratch:
        uri = f"sqlite:///{Path(scratch) / 'mlflow.db'}"
        out = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    if not shutil.which("sbatch"):
        sys.exit("bench_submit: sbatch is not on PATH; start the local cluster (make cluster-up)")
    for name, phase in PHASES.items():
        setattr(sweep, name, timed(phase, getattr(sweep, name)))
    with tempfile.TemporaryDirectory(prefix="bench_submit_") as tmp_name:
        tmp = Path(tmp_name)
        spec_path = tmp / "spec.yaml"
        spec_path.write_text(
            yaml.safe_dump(
                {
                    "name": f"bench_submit_{uuid.uuid4().hex[:6]}",
                    "base": str(REPO / "configs" / "synthetic_tiny.yaml"),
                    "runs_root": "runs",
                    "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
                    "grid": {"train.seed": list(range(RUNS))},
                    "overrides": {
                        "data.root": str(tmp / "data"),
                        "data.synthetic": {"train": 2, "val": 1, "height": 32, "width": 64, "seed": 0},
                    },
                    "executor": {
                        "slurm": {
                            "partition": partition(),
                            "gpus_per_node": 1,
                            "tasks_per_node": 1,
                            "cpus_per_task": 1,
                            "mem": "1G",
                            "time": 10,
                            "array_parallelism": 2,
                        }
                    },
                }
            )
        )
        spec = load_spec(spec_path)
        jobs = []
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the 100-line table
                jobs = sweep.submit(spec, "slurm")
            total = time.perf_counter() - started
        finally:
            arrays = sorted({job.job_id.split("_")[0] for job in jobs})
            if arrays:
                subprocess.run(["scancel", *arrays], check=False)
        assert len(jobs) == RUNS and len(arrays) == 1, f"{len(jobs)} jobs in arrays {arrays}"
    accounted = ""
    for _ in range(20):  # accounting records the array a moment after submission (job ids recur across restarts)
        sacct = ["sacct", "-n", "-X", "-P", "-S", "2020-01-01", "-j", arrays[0], "-o", "JobID,JobName,State"]
        lines = subprocess.run(sacct, capture_output=True, text=True).stdout.splitlines()
        accounted = "; ".join(line for line in lines if f"|{spec.name}|" in line)
        if accounted:
            break
        time.sleep(0.5)
    print(f"{RUNS}-run grid → one job array, sacct: {accounted or 'not recorded yet'} (cancelled right after)")
    print(f"{'phase':<22} {'s':>7}")
    for phase in ("expand", "store setup", "job checks", "git state (tags)", "synthetic data", "submit"):
        print(f"{phase:<22} {seconds[phase]:7.2f}")
    other = total - sum(seconds.values())
    print(f"{'other (lock, dirs, job records)':<22} {other:7.2f}")
    print(f"{'total':<22} {total:7.2f}   goal < {GOAL_S:.0f} s: {'met' if total < GOAL_S else 'NOT met'}")
    fresh = fresh_store_seconds()
    per_run = 1000 * (seconds["store setup"] - fresh) / RUNS
    print(f"(store setup: ~{fresh:.2f} s of it is MLflow creating the fresh sqlite store, measured apart after;")
    print(f" the rest is {per_run:.0f} ms per child run: create_run, update_run, log_batch of its params)")
    print(f"(before that, interpreter imports: {IMPORT_SECONDS:.2f} s)")


if __name__ == "__main__":
    main()
