"""The main job on the embedded default: synthetic data → tiny res50/res101 sweep → report."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from experiments.spec import load_spec
from experiments.store import default_tracking_uri
from experiments.sweep import submit

DEMO_SPEC = Path(__file__).resolve().parent / "sweeps" / "demo_synthetic.yaml"


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and any(s in ("idle", "mixed") for s in out.stdout.split())


def run_demo(workdir: Path, executor: str = "auto") -> int:
    """Run the demo sweep into ``workdir`` (data, runs, mlflow.db, report) and say where everything is."""
    start = time.perf_counter()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(DEMO_SPEC)
    spec.overrides = {**spec.overrides, "data.root": str(workdir / "data" / "synthetic")}
    spec.runs_root = workdir / "runs"
    uri = default_tracking_uri(workdir)
    if executor == "auto":
        executor = "slurm" if _cluster_up() else "local"
    print(f"demo: {len(spec.grid['train.seed']) * 4} runs on the {executor} executor; tracking {uri}", flush=True)
    submit(spec, executor, wait=True, tracking_uri=uri)
    from analysis.report import write_report

    report = write_report(spec.experiment, uri, workdir / "report")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"report:    {report}")
    print(
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        "  → http://127.0.0.1:5000"
    )
    return 0
