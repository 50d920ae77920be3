"""`analysis plan`: TOST power against a simulation of the project's own test, GPU-hours from the anchor and
from a real store's finished runs, and the shipped spec sized for its margin."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from tiny import study_spec_file

from analysis.plan import ANCHOR_S_PER_IT, format_plan, plan_study
from analysis.power import seeds_for_power, tost_power
from analysis.stats import tost_equivalence
from deeplab.model import model_info
from experiments.errors import ExperimentsError
from experiments.spec import expand_grid, load_spec

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "experiments" / "sweeps" / "r50_vs_r101_cityscapes.yaml"


@pytest.mark.parametrize(
    ("n_a", "n_b", "sd", "margin", "delta"),
    [(3, 3, 0.46, 0.5, 0.0), (10, 10, 0.46, 0.5, 0.0), (5, 8, 0.3, 0.5, 0.2), (4, 4, 0.2, 0.5, -0.1)],
)
def test_power_matches_a_simulation_of_the_projects_tost(n_a: int, n_b: int, sd: float, margin: float, delta: float):
    rng = np.random.default_rng(n_a * 100 + n_b)
    draws = 2000
    shown = sum(
        bool(tost_equivalence(rng.normal(delta, sd, n_a), rng.normal(0, sd, n_b), margin).equivalent)
        for _ in range(draws)
    )
    power = tost_power(n_a, n_b, sd, margin, delta)
    assert shown / draws == pytest.approx(power, abs=4 * math.sqrt(power * (1 - power) / draws) + 0.005)


def test_seeds_for_power_is_the_smallest_that_reaches_it() -> None:
    n = seeds_for_power(0.46, 0.5)
    assert tost_power(n, n, 0.46, 0.5) >= 0.8 > tost_power(n - 1, n - 1, 0.46, 0.5)
    assert seeds_for_power(0.46, 0.5, delta=0.25) > n > seeds_for_power(0.3, 0.5)
    assert seeds_for_power(0.46, 0.5, delta=0.5) is None  # a true Δ at the margin is not equivalence
    assert tost_power(1, 5, 0.46, 0.5) == 0.0


def test_the_shipped_study_is_sized_for_its_margin() -> None:
    spec = load_spec(STUDY)
    plan = plan_study(spec, "sqlite:////nonexistent/mlflow.db", replicates=4000)  # no store: anchor and evidence
    cfg = expand_grid(spec)[0].config
    flops = {b: model_info(dataclasses.replace(cfg.model, backbone=b), (768, 768)) for b in ("resnet50", "resnet101")}
    ratio = flops["resnet101"]["flops_per_forward"] / flops["resnet50"]["flops_per_forward"]
    assert 1.2 < ratio < 1.4
    s_per_it = {c.values["model.backbone"]: c.s_per_it for c in plan.cells}
    assert s_per_it == pytest.approx({"resnet50": ANCHOR_S_PER_IT, "resnet101": ANCHOR_S_PER_IT * ratio})
    for cell in plan.cells:
        assert cell.gpu_hours(2) == pytest.approx(cell.s_per_it * 40000 * 2 * len(cell.runs) / 3600)
    assert plan.margin == 0.5 and plan.margin_source == "the spec's analysis.margin"
    assert plan.sd_source.startswith("the evidence") and 0.3 < plan.sd < 0.7
    assert [c.n_a for c in plan.comparisons] == [16] and plan.comparisons[0].power >= 0.8
    assert plan.seeds_needed <= 16
    text = format_plan(plan)
    assert "store: nothing measured" in text and "UNDERPOWERED" not in text and "this grid has them" in text
    _check_designs(plan, text)
    schedules = plan_study(
        load_spec(REPO / "experiments" / "sweeps" / "r50_vs_r101_schedules.yaml"), "sqlite:////x/y.db", replicates=1000
    )
    assert all(c.power < 0.1 for c in schedules.comparisons) and "UNDERPOWERED" in format_plan(schedules)


def _check_designs(plan, text: str) -> None:
    """The shipped study is sequential; fixed and sequential side by side over Δ and sd (4000 replicates per
    figure: se ≤ 0.008 on a probability, ≤ 0.15 seeds)."""
    d = plan.designs
    assert d.sequential.looks == (4, 8, 12, 16) and d.sequential.futility and d.sequential.cap == 40
    assert {r.sd for r in d.rows} == {0.3, 0.46, 0.7} and 0.5 < d.gap < 0.75
    assert {r.delta for r in d.rows} == {0.0, 0.25, 0.5, d.gap, 1.0}
    row = {(r.sd, r.delta): r for r in d.rows}
    assert 16 * d.seed_cost == pytest.approx(plan.gpu_hours)
    assert row[0.46, d.gap].sequential.expected_seeds < 13.5 < 16  # the evidence's gap: stops early (~11.9)
    assert row[0.7, 0.0].sequential.p_equivalent > row[0.7, 0.0].fixed.p_equivalent + 0.25  # ~0.65 vs ~0.26
    for r in d.rows:
        if r.delta >= 0.5:
            assert max(r.fixed.p_equivalent, r.sequential.p_equivalent) <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / 4000)
    assert "designs, in GPU-hours" in text and "pilot may raise the maximum to 40" in text
    assert "sd 0.70: one public re-run" in text and "sd 0.46: the evidence" in text


def test_make_demo_prints_the_shipped_study_s_designs() -> None:
    """`make demo` opens with `analysis plan`'s fixed-vs-sequential table of the real study (1000 replicates
    here: the table's shape, not its figures, which the test above checks)."""
    from analysis.demo import study_designs

    lines = study_designs("sqlite:////nonexistent/mlflow.db", replicates=1000)
    text = "\n".join(lines)
    assert lines[0].endswith("python -m analysis plan experiments/sweeps/r50_vs_r101_cityscapes.yaml")
    assert "fixed: 16 seeds per backbone" in text and "sequential: looks at 4/8/12/16 seeds" in text
    assert "E[GPU-h]" in text and len([line for line in lines if "│" in line]) == 1 + 15  # header, 3 sds × 5 Δ


def _spec(tmp_path: Path) -> Path:
    spec = yaml.safe_load(STUDY.read_text())
    spec |= {"name": "planned", "base": str(REPO / "configs" / "cityscapes_r101_seed.yaml")}
    spec["analysis"] = {"margin": 0.5}
    spec["grid"] = {"model.backbone": ["resnet50", "resnet101"], "train.iterations": [2000, 4000], "train.seed": [0, 1]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_measured_runs_in_the_store_replace_the_anchor(tmp_path: Path) -> None:
    """Two finished res50 runs recorded as GPU runs (no GPU here: their records are written as a job would)."""
    spec = load_spec(_spec(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment(spec.experiment)
    for run, miou in zip(
        [r for r in expand_grid(spec) if r.name.startswith("backbone=resnet50,iterations=2000")],
        (78.0, 78.6),
        strict=True,
    ):
        start = int(time.time() * 1000)
        made = client.create_run(eid, start_time=start, tags={"config_hash": run.config_hash}, run_name=run.name)
        params = {"model.backbone": "resnet50", "train.iterations": "2000", "train.seed": str(run.config.train.seed)}
        params |= {"info.device": "cuda", "info.world_size": "2"}
        points = [Metric("train/lr", 0.01, start, 1), Metric("val/mIoU", miou, start + 1_800_000, 2000)]
        client.log_batch(made.info.run_id, metrics=points, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(made.info.run_id, "FINISHED", end_time=start + 1_800_000)  # 1800 s, 2000 iterations
    plan = plan_study(spec, uri, replicates=1000)
    cells = {(c.values["model.backbone"], c.iterations): c for c in plan.cells}
    for iterations in (2000, 4000):  # the schedule does not change s/iteration
        assert cells["resnet50", iterations].s_per_it == pytest.approx(0.9)
        assert cells["resnet50", iterations].source.startswith("measured: median of 2")
        assert cells["resnet101", iterations].source.startswith("anchor")
    assert plan.sd == pytest.approx(np.std([78.0, 78.6], ddof=1)) and plan.sd_source.startswith("the store")
    assert plan_study(spec, uri, sd=0.7, replicates=1000).sd == 0.7


def test_the_cli_prints_the_plan_and_refuses_bad_input(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "analysis", "plan", str(_spec(tmp_path)), "--tracking-uri", "sqlite:////x/y.db"]
    argv += ["--replicates", "1000"]
    done = subprocess.run([*argv, "--sd", "0.4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "8 runs: 4 cells × 2 seeds" in done.stdout and "from --sd" in done.stdout
    assert "iterations=2000: 2 vs 2 seeds → power " in done.stdout and "UNDERPOWERED" in done.stdout
    bad = subprocess.run([*argv, "--sd", "-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--sd: expected a positive finite number" in bad.stderr


def test_a_paired_spec_shows_the_paired_power_beside_welchs(tmp_path: Path) -> None:
    """analysis.paired: 2000 replicates per figure (se ≤ 0.011); at ρ 0.6 the paired test gains over Welch's
    at sd 0.7, at ρ 0 it cannot (fewer df)."""
    sequential = {"looks": [8, 16], "futility": True}
    with pytest.raises(ExperimentsError, match="analysis.paired must be true or false"):
        load_spec(study_spec_file(tmp_path, {"margin": 0.5, "paired": "yes"}))
    spec = load_spec(study_spec_file(tmp_path, {"margin": 0.5, "paired": True, "sequential": sequential}))
    assert spec.paired and spec.sequential.looks == (8, 16) and spec.sequential.max_seeds is None
    plan = plan_study(spec, "sqlite:////x/y.db", sd=0.46, replicates=2000)
    rows = [r for r in plan.designs.rows if r.paired]
    assert {r.delta for r in rows} == {0.0, plan.designs.gap}
    at_zero = next(r for r in rows if r.delta == 0 and r.sd == 0.7).paired
    assert at_zero[0.6][1] > at_zero[0.6][0] + 0.05 and at_zero[0.0][1] < at_zero[0.0][0] + 0.03
    assert "analysis.paired: sequential P(equiv.), Welch / paired" in format_plan(plan)
