"""A real, small sweep store for the analysis tests: the tiny sweep run through `python -m experiments sweep`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tiny import REPO

TINY_SPEC = REPO / "experiments" / "sweeps" / "tiny_synthetic.yaml"
SCHEDULES = [4, 6]  # two schedule lengths, so the analysis has one res50-vs-res101 cell per schedule


@dataclass(frozen=True)
class SweepStore:
    """Where the fixture sweep lives: its MLflow store, experiment name, spec and run directories."""

    tracking_uri: str
    experiment: str
    spec: Path
    run_dirs: list[Path]
    grid: dict[str, list]  # model.backbone, train.iterations, train.seed
    eval_every: int
    seconds: float  # wall time of the whole sweep


def _fixture_spec(root: Path) -> Path:
    """tiny_synthetic.yaml with two schedules, everything written under ``root``."""
    spec = yaml.safe_load(TINY_SPEC.read_text())
    spec["name"] = "analysis_fixture"
    spec["base"] = str((TINY_SPEC.parent / spec["base"]).resolve())
    spec["runs_root"] = str(root / "runs")
    spec["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}"}
    spec["grid"]["train.iterations"] = SCHEDULES
    spec["overrides"].pop("train.iterations")
    spec["overrides"]["data.root"] = str(root / "data")
    spec["overrides"]["train.keep_weights"] = False  # the analysis reads MLflow; 8 runs' weights would be ~1.6 GB
    spec["analysis"] = {"margin": 0.5, "sequential": {"looks": [2]}}  # the report's looks, at the grid's 2 seeds
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> SweepStore:
    """res50/res101 × 2 schedules × 2 seeds on the local executor (about 1–2 minutes of CPU)."""
    root = tmp_path_factory.mktemp("sweep")
    spec_path = _fixture_spec(root)
    spec = yaml.safe_load(spec_path.read_text())
    # artifacts: the sweep's sqlite store keeps them in root/mlartifacts (experiments.store.ensure_experiment)
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "experiments", "sweep", str(spec_path), "--executor", "local"],
        cwd=root,  # nothing lands in the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"fixture sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert any((root / "mlartifacts").rglob("config.yaml")), "the sweep's artifacts are not beside its database"
    run_dirs = sorted(p.parent for p in (root / "runs" / spec["name"]).glob("*/config.yaml"))
    every = spec["overrides"]["train.eval_every"]
    uri, seconds = spec["tracking"]["uri"], time.monotonic() - start
    return SweepStore(uri, spec["name"], spec_path, run_dirs, spec["grid"], every, seconds)
