"""The MLflow UI really shows a sweep and its verdict: a real (tiny) sweep on the local executor into a sqlite store,
`mlflow server` started through experiments.server, `analysis report` through that server, and headless Debian
chromium driven by playwright reading the runs table and the sweep's parent run.

A child run's page shows what people browse for: its System metrics tab, its datasets (the runs table's Dataset
column) and the prediction images under MLflow's step slider.

The screenshots (runs_table.png, system_metrics.png, predictions.png, prediction_full.png, parent_run.png,
report.png) land in $TEST_ARTIFACTS (or the test's tmp_path).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import REPO, TINY

from analysis.landing import HEADLINE_MAX
from experiments.server import running_server
from experiments.store import run_page_url, runs_page_url, sweep_parent
from experiments.store.views import VIEW_NAME

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
R50_S0 = "backbone=resnet50,seed=0"  # a child run's name: its axis tags (experiments.axes.run_name)
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


def write_spec(
    tmp_path: Path, name: str, tracking_uri: str, grid: dict[str, list] | None = None, **executor: dict
) -> Path:
    """A sweep of the real recipe (two runs unless ``grid`` says) on a tiny synthetic dataset, all inside tmp_path."""
    spec = {
        "name": name,
        "base": str(TINY),
        "grid": grid or {"model.backbone": ["resnet50"], "train.seed": [0, 1]},
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


def run_report(uri: str, out: Path) -> None:
    """`python -m analysis report` against ``uri`` (the server: publishing goes through http)."""
    argv = [sys.executable, "-m", "analysis", "report", "--experiment", SWEEP, "--tracking-uri", uri]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [*argv, "--out", str(out), "--bootstrap", "100"],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "published to the sweep's parent run" in done.stdout


def close_assistant(page: Any) -> None:
    """MLflow 3.17 opens its assistant panel over a quarter of the page on a first visit: close it."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.last.click()


def run_page_shows_system_metrics_and_predictions(page: Any, server: str, eid: str, run_id: str, shots: Path) -> None:
    """A child run's System metrics tab has charts of our samples; its Model metrics tab has the prediction images
    with a step slider over the validations (2 and 4), and moving it shows an image."""
    page.goto(run_page_url(server, eid, run_id))
    close_assistant(page)
    page.get_by_role("tab", name="System metrics").click()
    page.get_by_text("rank0_memory_megabytes", exact=True).first.wait_for()
    page.get_by_text("cpu_utilization_percentage", exact=True).first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()  # a chart drawn, not only its title
    page.screenshot(path=str(shots / "system_metrics.png"))
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_placeholder("Search metric charts").fill("val/prediction")
    slider = page.get_by_role("slider").first
    slider.wait_for()
    assert (slider.get_attribute("aria-valuemin"), slider.get_attribute("aria-valuemax")) == ("2", "4")
    # MLflow opens the slider at step 0, where no image is: move it to the last validation
    thumb, number = slider.bounding_box(), page.locator("input[type=number]").first.bounding_box()
    page.mouse.click(number["x"] - 20, thumb["y"] + thumb["height"] / 2)
    page.locator('img[src*="get-artifact"][src*="prediction"]').first.wait_for()
    page.mouse.move(5, 5)  # a card under the pointer shows its run's params over the image
    page.screenshot(path=str(shots / "predictions.png"))
    page.locator('[data-component-id="fullscreen_button_chartcard"]').first.click()  # the panel at full size
    page.get_by_role("dialog").locator('img[src*="get-artifact"]').first.wait_for()
    page.screenshot(path=str(shots / "prediction_full.png"))
    page.keyboard.press("Escape")


def test_mlflow_ui_shows_the_verdict_and_the_runs_table(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()  # before minutes of training
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = {"model.backbone": ["resnet50", "resnet101"], "train.seed": [0, 1]}  # one res50-vs-res101 cell
    spec = write_spec(tmp_path, SWEEP, uri, grid, local={"parallelism": 2, "threads_per_job": 1})
    run_sweep(spec, "--executor", "local")

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(SWEEP)
    eid = experiment.experiment_id
    children = {run.info.run_name: run for run in client.search_runs([eid]) if "mlflow.parentRunId" in run.data.tags}
    assert sorted(children) == [f"backbone={b},seed={s}" for b in ("resnet101", "resnet50") for s in (0, 1)]
    assert all(run.info.status == "FINISHED" and METRIC in run.data.metrics for run in children.values())

    shots = artifact_dir(tmp_path)
    with (
        running_server(uri, tmp_path / "artifacts", log=tmp_path / "server.log") as server,
        sync_playwright() as playwright,
    ):
        run_report(server, tmp_path / "report")
        parent = sweep_parent(uri, SWEEP)[1]
        headline = client.get_experiment_by_name(SWEEP).tags["mlflow.note.content"]
        assert headline.startswith("synthetic: Δ = res101 − res50: ") and len(headline) <= HEADLINE_MAX
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            # the runs table as the demo links it: child runs, with val/mIoU, backbone, iterations, seed preset
            page.goto(runs_page_url(server, eid))
            run_links = page.locator('a[href*="/runs/"]')
            for name in children:
                run_links.get_by_text(name, exact=True).wait_for()
            close_assistant(page)
            header = page.locator("[role=columnheader]")
            for column in (f"metrics.`{METRIC}`", "tags.`backbone`", "tags.`iterations`", "tags.`seed`"):
                header.and_(page.locator(f'[col-id="{column}"]')).first.wait_for()
            # the preset is a saved view: the Views menu names it; the landing line is not folded away
            page.get_by_test_id("saved-views-trigger").get_by_text(VIEW_NAME).wait_for()
            line = page.get_by_text(headline, exact=True).first
            line.wait_for()
            assert line.bounding_box()["height"] < 30, "the experiment's description wraps: MLflow folds it"
            shown = {}
            for name, run in children.items():  # grouped by backbone × schedule: a run's row id ends with its id
                row = page.locator(f'[role=row][row-id$="{run.info.run_id}"]')
                cell = row.locator(f'[role=gridcell][col-id="metrics.`{METRIC}`"]')
                shown[name] = cell.inner_text().strip()
                seed = row.locator('[role=gridcell][col-id="tags.`seed`"]').inner_text().strip()
                assert seed == run.data.params["train.seed"], name
                datasets = row.locator('[role=gridcell][col-id="attributes.`Dataset`"]').inner_text()
                assert "synthetic/train" in datasets, (name, datasets)  # the Datasets column tells synthetic runs
            page.screenshot(path=str(shots / "runs_table.png"))
            run_page_shows_system_metrics_and_predictions(page, server, eid, children[R50_S0].info.run_id, shots)
            assert page.get_by_text(SWEEP, exact=True).and_(run_links).count() == 0  # the parent is filtered out

            # the parent run's page: the verdict is its description
            page.goto(run_page_url(server, eid, parent))
            page.get_by_text(headline).first.wait_for()
            page.get_by_text("Synthetic data").first.wait_for()
            more = page.get_by_text("Show more", exact=True)
            if more.count():  # a long description is folded after a few lines
                more.first.click()
            link = page.get_by_role("link", name="report/report.html").get_attribute("href")
            assert link.startswith(f"#/experiments/{eid}/runs/{parent}/artifacts/report/report.html"), link
            body = page.inner_text("body")
            page.screenshot(path=str(shots / "parent_run.png"), full_page=True)

            page.set_viewport_size({"width": 1100, "height": 1400})
            page.goto((tmp_path / "report" / "report.html").as_uri())
            page.get_by_text("Verdict").first.wait_for()
            page.screenshot(path=str(shots / "report.png"))
            assert page.evaluate("document.documentElement.scrollWidth") <= 1100  # its tables fit the page
        finally:
            browser.close()
    print(f"screenshots of the MLflow UI and the report: {shots}")

    for line in client.get_run(parent).data.tags["mlflow.note.content"].splitlines():
        if line.startswith("- at "):
            assert line[2:40] in body, line  # the verdict lines, not just the headline
    for name, run in children.items():
        # the UI shows ten significant digits
        assert math.isclose(float(shown[name]), run.data.metrics[METRIC], rel_tol=1e-8), (name, shown[name])
