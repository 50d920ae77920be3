"""The analysis against a real sweep store: frames, per-image bootstrap, and the `report` command end to end."""

from __future__ import annotations

import base64
import html
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.frames import curves_frame, per_class_frame, per_image_confusions, runs_frame
from analysis.html import markdown_to_html
from analysis.published import published_deeplabv3plus
from analysis.stats import bootstrap_miou_delta
from deeplab.labels import CLASS_NAMES
from deeplab.metrics import iou_from_confusion
from deeplab.tracking import COST_DEVICE_HOURS, VAL_MIOU

if TYPE_CHECKING:
    from conftest import SweepStore


@pytest.fixture(scope="module")
def runs(sweep_store: SweepStore) -> pd.DataFrame:
    return runs_frame(sweep_store.tracking_uri, sweep_store.experiment)


def test_runs_frame_has_one_finished_row_per_grid_cell(runs: pd.DataFrame, sweep_store: SweepStore) -> None:
    grid = sweep_store.grid
    cells = set(zip(runs.backbone, runs.iterations, runs.seed, strict=True))
    assert len(runs) == len(cells) == 8
    assert cells == set(itertools.product(grid["model.backbone"], grid["train.iterations"], grid["train.seed"]))
    assert set(runs.config_hash) == {d.name for d in sweep_store.run_dirs}  # run dirs are named by config hash
    assert (runs.status == "FINISHED").all() and runs.synthetic.all()
    assert runs.miou.between(0, 100).all() and runs.miou_void_as_fp.between(0, 100).all()  # points
    params = runs.groupby("backbone").params.first()
    assert params["resnet101"] > params["resnet50"] > 1e7
    assert (runs.gflops > 0).all()


def test_wall_time_counts_training_not_queueing(runs: pd.DataFrame, sweep_store: SweepStore) -> None:
    seconds = 3600 * runs.wall_hours
    assert (seconds > 0).all()
    # 8 runs two at a time: no run takes most of the sweep (MLflow's start_time would: runs are created up front)
    assert seconds.max() < 0.8 * sweep_store.seconds
    assert (runs.device == "cpu").all() and runs.gpu_hours.isna().all()  # no GPU-hours claimed for CPU runs
    assert np.allclose(runs.device_hours, runs.wall_hours * runs.devices)
    # the cost figure's hours are the runs' own cost metrics: what MLflow's runs table shows
    client = MlflowClient(sweep_store.tracking_uri)
    shown = [client.get_run(run_id).data.metrics[COST_DEVICE_HOURS] for run_id in runs.run_id]
    assert runs.device_hours.tolist() == shown


def test_curves_have_a_point_at_every_validation(runs: pd.DataFrame, sweep_store: SweepStore) -> None:
    curves = curves_frame(sweep_store.tracking_uri, list(runs.run_id))
    miou = curves[curves.metric == VAL_MIOU]
    every = sweep_store.eval_every
    for run in runs.itertuples():
        points = miou[miou.run_id == run.run_id]
        expected = sorted(set(range(every, run.iterations + 1, every)) | {run.iterations})
        assert list(points.step) == expected, run.run_name
        assert points.value.iloc[-1] == pytest.approx(run.miou)  # the run record's value is the last point


def test_per_class_iou_averages_to_the_run_miou(runs: pd.DataFrame, sweep_store: SweepStore) -> None:
    per_class = per_class_frame(sweep_store.tracking_uri, list(runs.run_id))
    assert set(per_class["class"]) <= set(CLASS_NAMES)
    assert per_class.iou.between(0, 100).all()
    means = per_class.groupby("run_id").iou.mean()  # classes with undefined IoU are not logged
    assert means.loc[runs.run_id].to_numpy() == pytest.approx(runs.miou.to_numpy(), abs=1e-4)  # 4 decimals each


def test_per_image_confusions_feed_the_paired_bootstrap(runs: pd.DataFrame, sweep_store: SweepStore) -> None:
    longest = runs[runs.iterations == runs.iterations.max()]
    pooled = {}
    for backbone, group in longest.groupby("backbone"):
        loaded = [per_image_confusions(sweep_store.tracking_uri, rid) for rid in group.run_id]
        names = {tuple(n) for n, _ in loaded}
        assert len(names) == 1  # every run is scored on the same validation images, in the same order
        for (_, mats), miou in zip(loaded, group.miou, strict=True):
            assert mats.shape[1:] == (20, 20) and mats.shape[0] == len(next(iter(names)))
            assert 100 * np.nanmean(iou_from_confusion(mats.sum(0))) == pytest.approx(miou, abs=1e-4)
        pooled[backbone] = sum(mats for _, mats in loaded)
    result = bootstrap_miou_delta(pooled["resnet50"], pooled["resnet101"], n_boot=200)
    assert result.n_images == pooled["resnet50"].shape[0] and result.n_boot == 200
    assert result.ci_low <= result.delta <= result.ci_high


# in their numbered order; the fixture's spec plans a sequential design, so its looks come first
FIGURES = ("looks", "delta_curves", "curves", "final_vs_schedule", "per_class_delta", "cost")
EVIDENCE_FIGURES = ("fork_curves", "fork_loss", "forest")  # the public evidence, the report's last section


@pytest.fixture(scope="module")
def report(sweep_store: SweepStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    env = {**os.environ, "MLFLOW_TRACKING_URI": sweep_store.tracking_uri}  # how the CLI finds the store
    argv = [sys.executable, "-m", "analysis", "report", "--experiment", sweep_store.experiment, "--out", str(out)]
    done = subprocess.run([*argv, "--bootstrap", "200"], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"report written to {out / 'report.md'}" in done.stdout
    return out


def test_report_writes_markdown_and_figures(report: Path) -> None:
    text = (report / "report.md").read_text()
    for name in FIGURES:
        for suffix in (".png", ".svg"):
            assert (report / "figures" / f"{name}{suffix}").stat().st_size > 1000, name + suffix
        assert f"(figures/{name}.png)" in text
    runs_section = text.split("## Runs")[1]
    assert runs_section.count("| FINISHED |") == 8
    # synthetic runs never share an axis with published (Cityscapes) numbers
    final = (report / "figures" / "final_vs_schedule.svg").read_text()
    assert "published Cityscapes numbers are not drawn" in final and "published: " not in final


def test_report_html_is_self_contained_and_says_the_same(report: Path) -> None:
    """report.html: same verdict lines and run rows as report.md, every figure inlined byte for byte."""
    page = (report / "report.html").read_text()
    text = (report / "report.md").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for line in text.split("## Verdict")[1].split("\n## ")[0].splitlines():
        if line.startswith("- at "):
            assert html.escape(line[2:].split("`")[0], quote=False) in page
    assert page.count("<td>FINISHED</td>") == text.split("## Runs")[1].count("| FINISHED |") == 8
    inlined = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    files = [report / "figures" / f"{n}.png" for n in FIGURES]
    files += [report / "evidence" / "figures" / f"{n}.png" for n in EVIDENCE_FIGURES]
    assert len(inlined) == len(files)
    for path, data in zip(files, inlined, strict=True):
        assert base64.b64decode(data) == path.read_bytes()
    assert "figures/" not in page  # nothing left to resolve beside the file
    assert (report / "evidence" / "report.html").is_file()  # also on its own


def test_report_links_work_inside_mlflow_s_artifact_viewer(report: Path) -> None:
    """MLflow 3.17 shows report.html from a blob: URL in a frame sandboxed to scripts: a relative link there blanks
    the pane and a new tab is refused. So every link is to a heading of the page itself, or absolute."""
    page = (report / "report.html").read_text()
    ids = set(re.findall(r' id="([^"]+)"', page))
    hrefs = re.findall(r' href="([^"]*)"', page)
    assert hrefs, "the report links to its public-evidence section"
    for href in hrefs:
        assert (href.startswith("#") and href[1:] in ids) or re.match(r"https?://", href), href
    assert "#does-a-resnet-50-backbone-match-resnet-101-what-public-evidence-says" in hrefs


def test_markdown_to_html_escapes_and_never_stalls(tmp_path: Path) -> None:
    text = "# T <x>\n\n![not an image line\nplain & **bold** `c<d>`\n\n| a | b |\n|---|---|\n| <i> | 1.5 |\n"
    page = markdown_to_html(text, tmp_path)
    assert "<title>T &lt;x&gt;</title>" in page
    assert "<p>![not an image line\nplain &amp; <strong>bold</strong> <code>c&lt;d&gt;</code></p>" in page
    assert '<td>&lt;i&gt;</td>\n<td class="num">1.5</td>' in page
    assert "<i>" not in page  # raw HTML in the text is text


def test_report_verdict_says_synthetic_and_too_few_seeds(report: Path, sweep_store: SweepStore) -> None:
    verdict = (report / "report.md").read_text().split("## Verdict")[1].split("\n## ")[0]
    lines = [line for line in verdict.splitlines() if line.startswith("- at ")]
    assert len(lines) == len(sweep_store.grid["train.iterations"])  # one sentence per schedule length
    for line in lines:
        assert "fewer than 3 seeds per backbone, so no equivalence claim is made" in line
        assert "synthetic data" in line
        assert "equivalent within" not in line  # neither a claim of equivalence nor of a difference
    assert "**These runs use synthetic data**" in verdict


def test_report_lists_the_published_numbers(report: Path) -> None:
    section = (report / "report.md").read_text().split("## Published numbers")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    published = published_deeplabv3plus()
    assert len(rows) == len(published) > 0
    for row, expected in zip(rows, published.itertuples(), strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == expected.source and cells[1] == expected.backbone
        assert float(cells[5]) == pytest.approx(expected.miou, abs=0.005)


def test_report_opens_with_provenance_and_numbers_its_figures_before_the_tables(
    report: Path, sweep_store: SweepStore, runs: pd.DataFrame
) -> None:
    text = (report / "report.md").read_text()
    head = text.split("## Verdict")[0]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert re.search(r"written \d{4}-\d\d-\d\d \d\d:\d\d UTC", head) and f"`{commit}`" in head
    assert f"`{sweep_store.tracking_uri}`" in head and f"(id {runs.experiment_id.iloc[0]})" in head
    assert f"mlflow ui --backend-store-uri {sweep_store.tracking_uri}" in head
    assert all(f"`{rid}`" in text.split("## Runs")[1] for rid in runs.run_id)  # sqlite: run ids, not links
    captions = re.findall(r"^\*\*Figure (\d)\.\*\* (.+)$", text, flags=re.M)
    assert [int(n) for n, _ in captions] == list(range(1, len(FIGURES) + 1))
    assert "each seed (n < 3)" in captions[2][1] and "no band" in captions[1][1]  # 2 seeds: no t-band drawn
    assert "repeated CI" in captions[0][1]
    last_figure = text.index(f"**Figure {len(FIGURES)}.**")
    for table in ("## Statistics", "## Final val mIoU", "## Published numbers", "## Deviations", "## Runs"):
        assert text.index(table) > last_figure, table


def test_statistics_table_agrees_with_the_verdict(report: Path) -> None:
    text = (report / "report.md").read_text()
    rows = [
        r
        for r in text.split("## Statistics")[1].split("\n## ")[0].splitlines()
        if r.startswith("| ") and "iterations" in r
    ]
    assert len(rows) == 4  # 2 schedules × (official, void as FP)
    for row in rows:
        assert "| not tested (n<3) |" in row and "False" not in row and "True" not in row
    verdict = text.split("## Verdict")[1].split("\n## ")[0]
    assert verdict.count("no equivalence claim is made") == 2
    assert "change with schedule length" in verdict  # 2 schedules × 2 seeds: the fit is made


def test_report_shows_the_deviations_table_once_with_per_config_differences(report: Path) -> None:
    section = (report / "report.md").read_text().split("## Deviations from the seed")[1].split("\n## ")[0]
    assert section.count("| aspect | seed | these runs | match | to match |") == 1
    assert "| augmentation order |" in section and "### Config" not in section
    differ = section.split("Where the configs differ:")[1]
    header = [c.strip() for c in differ.strip().splitlines()[0].strip("|").split("|")]
    assert sorted(header[1:]) == sorted(f"{b} @ iterations={i}" for b in ("res50", "res101") for i in (4, 6))
    rows = {r.split("|")[1].strip(): r for r in differ.strip().splitlines()[2:]}
    assert set(rows) == {"backbone", "iterations"}  # the two grid axes, nothing else differs
    assert "| backbone | ResNet-101 (fork: ResNet-50) | differs by config: below |" in section


def test_delta_curves_on_the_sweep_store(runs: pd.DataFrame, sweep_store: SweepStore) -> None:
    from analysis.cells import study_axes
    from analysis.gap import delta_curves
    from experiments.store import sweep_axes

    axes = study_axes(sweep_axes(sweep_store.tracking_uri, sweep_store.experiment), runs)
    assert axes.cell_keys == ("train.iterations",) and (axes.a, axes.b) == ("resnet101", "resnet50")
    curves = curves_frame(sweep_store.tracking_uri, list(runs.run_id))
    deltas = delta_curves(runs, curves, axes)
    assert set(deltas.iterations) == set(sweep_store.grid["train.iterations"])
    final = deltas.sort_values("step").groupby("iterations").last()
    for iterations, row in final.iterrows():
        cell = runs[runs.iterations == iterations]
        means = cell.groupby("backbone").miou.mean()
        assert row.delta == pytest.approx(means["resnet101"] - means["resnet50"])  # the last point is the final
        assert len(row.pairs) == 4 and np.isnan(row.low)  # 2 × 2 seed differences, no band with n < 3
