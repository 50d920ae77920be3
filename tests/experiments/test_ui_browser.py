"""The MLflow UI really shows a sweep: a real (tiny) sweep on the local executor into a sqlite store, `mlflow server`
started through experiments.server, and headless Debian chromium driven by playwright reading the runs table.

The screenshot lands in $TEST_ARTIFACTS (or the test's tmp_path); its path is printed.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import REPO, TINY

from experiments.server import running_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SWEEP = "ui_tiny"
METRIC = "val/mIoU"
TIMEOUT_MS = 60_000  # two shared cores: the UI's first render can take a while


def chromium_path() -> str:
    """Debian's chromium (or $CHROMIUM); missing → skip, except in CI where it is a failure."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        message = f"no chromium at {path}: `apt-get install chromium` (Debian) or set CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def artifact_dir(tmp_path: Path) -> Path:
    out = Path(os.environ["TEST_ARTIFACTS"]) if os.environ.get("TEST_ARTIFACTS") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_spec(tmp_path: Path, name: str, tracking_uri: str, **executor: dict) -> Path:
    """A two-run sweep of the real recipe on a tiny synthetic dataset, everything inside tmp_path."""
    spec = {
        "name": name,
        "base": str(TINY),
        "grid": {"model.backbone": ["resnet50"], "train.seed": [0, 1]},
        "overrides": {
            "data.root": str(tmp_path / "data"),
            "data.synthetic": {"train": 4, "val": 2, "height": 64, "width": 128, "seed": 0},
            "data.crop_size": [32, 64],
            "data.batch_size_per_gpu": 2,
            "train.iterations": 4,
            "train.eval_every": 2,
            "train.checkpoint_every": 2,
            "train.log_every": 1,
            "schedule.warmup_iters": 1,
        },
        "runs_root": str(tmp_path / "runs"),
        "tracking": {"uri": tracking_uri},
        "executor": executor,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_sweep(spec: Path, *args: str, timeout: float = 900) -> str:
    """`python -m experiments sweep SPEC ARGS` in the spec's directory; its output (asserted successful)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the spec names the store
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "experiments", "sweep", str(spec), *args],
        cwd=spec.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    print(f"sweep {' '.join(args)}: exit {done.returncode} after {time.monotonic() - start:.0f} s\n{output[-3000:]}")
    assert done.returncode == 0, f"the sweep failed:\n{output[-3000:]}"
    return output


def test_mlflow_ui_shows_the_child_runs_and_their_val_miou(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()  # before minutes of training
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, SWEEP, uri, local={"parallelism": 2, "threads_per_job": 1})
    run_sweep(spec, "--executor", "local")

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(SWEEP)
    children = {
        run.info.run_name: run
        for run in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" in run.data.tags
    }
    assert sorted(children) == ["r50-s0", "r50-s1"]
    assert all(run.info.status == "FINISHED" and METRIC in run.data.metrics for run in children.values())

    screenshot = artifact_dir(tmp_path) / "mlflow_ui_runs.png"
    with (
        running_server(uri, tmp_path / "artifacts", log=tmp_path / "server.log") as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 2000, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            try:
                # MLflow 3.x opens in its GenAI mode; the runs table of an experiment is "Training runs", with
                # child runs collapsed under their parent until its [+] is clicked.
                page.goto(f"{server}/#/experiments/{experiment.experiment_id}/runs")
                run_links = page.locator('a[href*="/runs/"]')
                run_links.get_by_text(SWEEP, exact=True).wait_for()
                page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
                for name in children:
                    run_links.get_by_text(name, exact=True).wait_for()
                # metric columns are opt-in: pick val/mIoU in the "Columns" menu
                page.get_by_role("button", name="Columns").click()
                page.get_by_text(METRIC, exact=True).click()
                page.keyboard.press("Escape")
                column = f"metrics.`{METRIC}`"
                page.locator(f'[role=columnheader][col-id="{column}"]').first.wait_for()
                shown = {}
                for name, run in children.items():
                    row = page.locator(f'[role=row][row-id="{run.info.run_id}"]')
                    assert row.get_by_text(name, exact=True).count() == 1, f"run {name} is not in its table row"
                    shown[name] = row.locator(f'[role=gridcell][col-id="{column}"]').inner_text().strip()
            finally:
                page.screenshot(path=str(screenshot))
                print(f"screenshot of the MLflow UI: {screenshot}")
            body = page.inner_text("body")
        finally:
            browser.close()

    assert METRIC in body and all(name in body for name in children)
    for name, run in children.items():
        assert math.isclose(float(shown[name]), run.data.metrics[METRIC], rel_tol=1e-9), (name, shown[name])
