"""The sequential study's looks recomputed from a runs frame (analysis.looks): seed order, sign, decisions, cost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny import REPO

from analysis.cells import study_axes
from analysis.figures import looks_figure
from analysis.frames import LOGGED_DEVICE_HOURS
from analysis.looks import (
    Cost,
    cell_looks,
    decision_sentence,
    looks_table,
    run_costs,
    sequential_design,
    study_spec,
)
from experiments.sequential import SequentialDesign, analyse
from experiments.spec import load_spec

STUDY = REPO / "experiments" / "sweeps" / "r50_vs_r101_cityscapes.yaml"
GRID_SEEDS = [7, 3, 11, 0, 5, 9, 1, 14, 2, 8, 4, 15, 6, 13, 10, 12]  # a grid's order, not ascending


def _runs(lead: float, sd: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """16 seeds per backbone at 40000 iterations; res101 ``lead`` points above res50 on average."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "run_id": f"{bb}-{s}",
            "config_hash": f"h-{bb}-{s}",
            "backbone": bb,
            "iterations": 40000,
            "seed": s,
            "miou": 78.0 + lead * (bb == "resnet101") + rng.normal(0, sd),
            "status": "FINISHED",
        }
        for bb in ("resnet50", "resnet101")
        for s in GRID_SEEDS
    ]
    return pd.DataFrame(rows)


def _cost(runs: pd.DataFrame, hours: float = 20.0) -> Cost:
    return Cost(pd.Series(hours, index=runs.run_id.to_numpy()), "GPU-hours", "a test's")


def test_looks_follow_the_grid_s_seed_order_and_the_sign_convention() -> None:
    runs = _runs(lead=2.0)
    axes = study_axes({}, runs)
    design = SequentialDesign((4, 8, 12, 16), 0.5, futility=True)
    [cell] = cell_looks(runs, axes, design, GRID_SEEDS, _cost(runs))
    assert cell.seeds == GRID_SEEDS
    by = runs.set_index(["backbone", "seed"]).miou
    expected = analyse(by["resnet101"][GRID_SEEDS].to_numpy(), by["resnet50"][GRID_SEEDS].to_numpy(), design)
    assert [look.delta for look in cell.looks] == [look.delta for look in expected]
    assert cell.looks[0].delta == pytest.approx(
        by["resnet101"][GRID_SEEDS[:4]].mean() - by["resnet50"][GRID_SEEDS[:4]].mean()
    )
    assert cell.looks[-1].delta > 1.5  # res101 better: Δ = res101 − res50 is positive
    assert cell.looks[-1].futile and cell.looks[-1].k == 2  # 2 points: futility stops at look 2
    table = looks_table([cell], axes)
    assert list(table["look"]) == ["1 of 4", "2 of 4"] and table["decision"].iloc[-1].startswith("stop: futility")
    assert list(table["seeds per backbone"]) == [4, 8] and table["Δ res101 − res50"].iloc[0].startswith("+")
    sentence = decision_sentence(cell, axes)
    # 8 seeds of each backbone at 20 GPU-hours a run; the fixed design's 16: 640
    assert "stopped for futility at look 2 of 4" in sentence and "the looks used 320 GPU-hours" in sentence
    assert "(and 320 on finished runs the looks did not need)" in sentence and "seeds per backbone take 640" in sentence


def test_a_seed_counts_once_both_backbones_finished_it() -> None:
    runs = _runs(lead=0.45)
    gone = GRID_SEEDS[1::3]  # 6 res50 seeds not finished (yet): 10 seeds of both
    runs = runs[~((runs.backbone == "resnet50") & runs.seed.isin(gone))]
    axes = study_axes({}, runs)
    [cell] = cell_looks(runs, axes, SequentialDesign((4, 8, 12, 16), 0.5), GRID_SEEDS, _cost(runs))
    assert cell.seeds == [s for s in GRID_SEEDS if s not in gone]
    assert [look.n for look in cell.looks] == [4, 8]
    assert "continue: look 3 needs 12 seeds per backbone (look 2 of 4 (8 seeds per backbone)" in decision_sentence(
        cell, axes
    )


def test_the_figure_draws_each_look(tmp_path) -> None:
    runs = _runs(lead=0.1, sd=0.2, seed=3)
    axes = study_axes({}, runs)
    cells = cell_looks(runs, axes, SequentialDesign((4, 8, 12, 16), 0.5), GRID_SEEDS, _cost(runs))
    png, svg = looks_figure(cells, tmp_path, axes)
    assert png.stat().st_size > 1000 and "res101 − res50" in svg.read_text()


def test_costs_are_the_runs_own_when_logged_else_the_planner_s() -> None:
    spec = load_spec(STUDY)
    runs = _runs(lead=0.0).assign(device="cuda", wall_hours=10.0, synthetic=False)
    planned = run_costs(runs, spec)  # no cost/device_hours: the plan's anchor (2 GPUs × 40000 × s/iteration)
    assert planned.unit == "GPU-hours" and "planner's model, from the fork's anchor" in planned.source
    per_run = planned.hours.groupby(runs.set_index("run_id").backbone).mean()
    assert per_run["resnet50"] == pytest.approx(0.82 * 40000 * 2 / 3600, rel=0.01)  # the anchor is res50's own
    assert per_run["resnet101"] > per_run["resnet50"]
    logged = run_costs(runs.assign(**{LOGGED_DEVICE_HOURS: 5.0}), spec)
    assert logged.unit == "device-hours" and (logged.hours == 5.0).all() and LOGGED_DEVICE_HOURS in logged.source
    design = sequential_design(spec, 0.5)
    assert design.looks == (4, 8, 12, 16) and design.futility and design.cap == 40 and design.margin == 0.5


def test_the_spec_comes_from_the_path_given_and_a_bad_one_is_said(tmp_path) -> None:
    spec, where = study_spec("sqlite:////nonexistent/mlflow.db", "any", str(STUDY))
    assert spec is not None and spec.sequential.looks == (4, 8, 12, 16) and where == f"the sweep spec {STUDY}"
    spec, where = study_spec("sqlite:////nonexistent/mlflow.db", "any", str(tmp_path / "gone.yaml"))
    assert spec is None and "not readable here" in where and "--spec" in where
