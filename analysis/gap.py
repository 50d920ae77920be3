"""The gap along the curves: Δ mIoU (a − b) at every validation of each cell, and whether the final gap changes
with schedule length (all values in points)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.cells import Cell, StudyAxes, cell_label, iter_cells
from analysis.stats import welch_interval
from deeplab.tracking import VAL_MIOU

MIN_BAND_SEEDS = 3  # below this a t-band over seeds is wider than the scale: show the seeds instead
LIMIT = 100.0  # |Δ mIoU| cannot exceed 100 points


def delta_curves(runs: pd.DataFrame, curves: pd.DataFrame, axes: StudyAxes, metric: str = VAL_MIOU) -> pd.DataFrame:
    """Per cell and validation step: Δ of the seed means, its Welch 95% band (clipped to ±100; NaN when either
    backbone has < 3 seeds there) and every a-seed − b-seed difference (seeds are not paired)."""
    data = curves[curves.metric == metric]
    rows = []
    for cell in iter_cells(runs, axes):
        a, b = cell.a, cell.b
        va = data[data.run_id.isin(a.run_id)].groupby("step").value.agg(list)
        vb = data[data.run_id.isin(b.run_id)].groupby("step").value.agg(list)
        for step in sorted(set(va.index) & set(vb.index)):
            xa, xb = np.array(va[step]), np.array(vb[step])
            low, high = welch_interval(xa, xb) if min(len(xa), len(xb)) >= MIN_BAND_SEEDS else (math.nan, math.nan)
            rows.append(
                {
                    "cell": cell_label(axes, cell.key),
                    "iterations": cell.key.iterations,
                    "step": int(step),
                    "delta": float(xa.mean() - xb.mean()),
                    "low": max(low, -LIMIT),
                    "high": min(high, LIMIT),
                    "n_a": len(xa),
                    "n_b": len(xb),
                    "pairs": tuple(float(d) for d in (xa[:, None] - xb[None, :]).ravel()),
                }
            )
    columns = ["cell", "iterations", "step", "delta", "low", "high", "n_a", "n_b", "pairs"]
    return pd.DataFrame(rows, columns=columns)


@dataclass
class ScheduleFit:
    group: str  # the cell's other axes ('' when schedule is the only one)
    slope: float  # change of Δ per doubling of iterations, points
    ci_low: float
    ci_high: float
    n_runs: int
    schedules: tuple[int, ...]
    reason: str = ""  # why no fit was made (slope NaN)


def schedule_fits(runs: pd.DataFrame, axes: StudyAxes) -> list[ScheduleFit]:
    """Per group of the non-schedule axes: OLS of per-run final mIoU on backbone × log2(iterations); the
    interaction is the change of Δ per doubling, with its 95% t-interval."""
    groups: dict[str, list[Cell]] = {}
    for cell in iter_cells(runs, axes):
        groups.setdefault(axes.label(cell.key.others), []).append(cell)
    return [_fit(group, cells, axes) for group, cells in groups.items()]


def _fit(group: str, cells: list[Cell], axes: StudyAxes) -> ScheduleFit:
    import statsmodels.api as sm

    schedules = tuple(cell.key.iterations for cell in cells)
    n_runs = sum(len(a) + len(b) for _, a, b in cells)
    if len(schedules) < 2:
        return ScheduleFit(group, math.nan, math.nan, math.nan, n_runs, schedules, "only one schedule length")
    if min(min(len(a), len(b)) for _, a, b in cells) < 2:
        reason = "fewer than 2 seeds per backbone at some schedule length, so no seed spread sizes the interval"
        return ScheduleFit(group, math.nan, math.nan, math.nan, n_runs, schedules, reason)
    frame = pd.concat([pd.concat([a, b]) for _, a, b in cells])
    x = np.log2(frame.iterations.to_numpy(dtype=float))
    is_a = (frame.backbone == axes.a).to_numpy(dtype=float)
    design = np.column_stack([np.ones_like(x), x, is_a, is_a * x])
    fit = sm.OLS(frame.miou.to_numpy(dtype=float), design).fit()
    low, high = fit.conf_int(0.05)[3]
    return ScheduleFit(group, float(fit.params[3]), float(low), float(high), n_runs, schedules)


def fit_sentence(fit: ScheduleFit, axes: StudyAxes) -> str:
    """One sentence: does the gap change with schedule length?"""
    where = f"for {fit.group}, " if fit.group else ""
    if math.isnan(fit.slope):
        return _capital(f"{where}no fit of the gap against schedule length is made: {fit.reason}.")
    changes = fit.ci_low > 0 or fit.ci_high < 0
    span = f"{min(fit.schedules)}–{max(fit.schedules)} iterations"
    return _capital(
        f"{where}the gap {'does' if changes else 'does not detectably'} change with schedule length: "
        f"Δ ({axes.delta_name}) moves {fit.slope:+.2f} points per doubling of iterations, 95% CI "
        f"{fit.ci_low:+.2f}…{fit.ci_high:+.2f} (OLS of per-run mIoU on backbone × log2 iterations, "
        f"{fit.n_runs} runs, {span})."
    )


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]
