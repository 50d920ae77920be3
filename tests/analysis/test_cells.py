"""Cells from the sweep's axes, on frames: an extra axis splits cells and is never pooled across."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.cells import DELTA_NAME, cell_label, iter_cells, missing_cells, study_axes
from analysis.errors import AnalysisError
from analysis.gap import delta_curves, fit_sentence, schedule_fits

GRID = {
    "model.backbone": ["resnet101", "resnet50"],
    "train.iterations": [1000, 4000],
    "model.weights": ["imagenet", "none"],
    "train.seed": [0, 1, 2],
    "data.crop_size": [[512, 1024]],  # one value: not a cell axis
}


def _runs(gap_per_doubling: float = 0.0) -> pd.DataFrame:
    """One run per grid point; Δ = res101 − res50 = +1 at 1000 iterations, plus ``gap_per_doubling`` per doubling,
    and imagenet weights 20 points above none (pooling across weights would show up in the spread)."""
    rng = np.random.default_rng(0)
    rows = []
    for bb, it, w, seed in itertools.product(
        *(GRID[k] for k in ("model.backbone", "train.iterations", "model.weights", "train.seed"))
    ):
        gap = (-1 - gap_per_doubling * np.log2(it / 1000)) if bb == "resnet50" else 0.0
        miou = 60 + 20 * (w == "imagenet") + gap + rng.normal(0, 0.05)
        rows.append(
            {
                "run_id": f"{bb}-{it}-{w}-{seed}",
                "backbone": bb,
                "iterations": it,
                "model.weights": w,
                "seed": seed,
                "miou": miou,
                "status": "FINISHED",
            }
        )
    return pd.DataFrame(rows)


def test_extra_axis_defines_cells_and_backbones_come_in_the_convention_order() -> None:
    runs = _runs()
    axes = study_axes({**GRID, "model.backbone": ["resnet50", "resnet101"]}, runs)  # the grid's order is not it
    assert (
        (axes.a, axes.b, axes.delta_name)
        == ("resnet101", "resnet50", DELTA_NAME)
        == ("resnet101", "resnet50", "res101 − res50")
    )
    assert axes.ahead(0.4) == "res101 ahead" and axes.ahead(-0.4) == "res50 ahead" and axes.ahead(0.0) == "level"
    assert axes.cell_keys == ("train.iterations", "model.weights")
    cells = list(iter_cells(runs, axes))
    assert len(cells) == 4
    for cell in cells:
        assert len(cell.a) == len(cell.b) == 3
        assert set(cell.a["model.weights"]) == set(cell.b["model.weights"]) == {cell.key["model.weights"]}  # not pooled
        assert (cell.a.miou.mean() - cell.b.miou.mean()) == pytest.approx(1, abs=0.2)  # res101 leads by 1
    assert (cells[0].key.iterations, cells[0].key.others) == (1000, {"model.weights": "imagenet"})
    assert cell_label(axes, cells[0].key) == "iterations=1000, weights=imagenet"  # as the runs' tags spell them


def test_without_a_recorded_grid_schedule_length_is_the_only_cell_axis() -> None:
    axes = study_axes({}, _runs())
    assert axes.cell_keys == ("train.iterations",) and axes.a == "resnet101"
    with pytest.raises(AnalysisError, match="model.backbone"):
        study_axes({"model.backbone": ["resnet50"]}, _runs())
    with pytest.raises(AnalysisError, match="model.foo"):
        study_axes({**GRID, "model.foo": [1, 2]}, _runs())


def test_missing_cells_name_backbone_and_cell() -> None:
    runs = _runs()
    axes = study_axes(GRID, runs)
    done = runs[~((runs.backbone == "resnet50") & (runs.iterations == 4000) & (runs["model.weights"] == "none"))]
    assert missing_cells(runs, done, axes) == ["resnet50 @ iterations=4000, weights=none"]


@pytest.mark.parametrize("slope", [0.0, 1.5])
def test_schedule_fit_recovers_the_gap_per_doubling_in_each_weights_group(slope: float) -> None:
    runs = _runs(slope)
    axes = study_axes(GRID, runs)
    fits = schedule_fits(runs, axes)
    assert [f.group for f in fits] == ["weights=imagenet", "weights=none"]
    for fit in fits:
        assert fit.ci_low < slope < fit.ci_high and fit.ci_high - fit.ci_low < 0.5
        assert fit.n_runs == 12 and fit.schedules == (1000, 4000)
        sentence = fit_sentence(fit, axes)
        assert ("does not detectably change" in sentence) == (slope == 0.0)
    one = schedule_fits(runs[runs.seed == 0], axes)[0]
    assert np.isnan(one.slope) and "fewer than 2 seeds" in fit_sentence(one, axes)
    short = schedule_fits(runs[runs.iterations == 1000], axes)[0]
    assert "only one schedule length" in fit_sentence(short, axes)


def test_delta_band_is_welch_with_three_seeds_and_seed_differences_below() -> None:
    runs = _runs()
    axes = study_axes(GRID, runs)
    curves = pd.DataFrame({"run_id": runs.run_id, "step": runs.iterations, "metric": "val/mIoU", "value": runs.miou})
    deltas = delta_curves(runs, curves, axes)
    assert len(deltas) == 4 and deltas.low.notna().all()
    assert (deltas.low <= deltas.delta).all() and (deltas.delta <= deltas.high).all()
    assert deltas.pairs.map(len).eq(9).all()
    thin = delta_curves(runs[runs.seed < 2], curves, axes)
    assert thin.low.isna().all() and thin.pairs.map(len).eq(4).all()
    assert thin.delta.to_list() == pytest.approx([np.mean(p) for p in thin.pairs])
