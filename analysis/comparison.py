"""The comparison the report and the notebook share: cells from the sweep's axes, per-cell tests, Δ curves,
the gap-vs-schedule fit and the verdict in words (all mIoU in points)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.cells import StudyAxes, cell_label, iter_cells, missing_cells, study_axes
from analysis.errors import AnalysisError
from analysis.frames import curves_frame, per_image_confusions, runs_frame
from analysis.gap import ScheduleFit, delta_curves, fit_sentence, schedule_fits
from analysis.stats import BootstrapResult, TostResult, bootstrap_miou_delta, tost_equivalence
from deeplab.tracking import VAL_MIOU, VAL_MIOU_SEED
from experiments.errors import ExperimentsError
from experiments.store import sweep_axes

MIN_TOST_SEEDS = 3


@dataclass
class CellComparison:
    key: tuple  # values of the study's cell axes, train.iterations first
    label: str
    n_a: int
    n_b: int
    tost: TostResult
    tost_void_as_fp: TostResult
    bootstrap: BootstrapResult | None
    bootstrap_void_as_fp: BootstrapResult | None

    @property
    def iterations(self) -> int:
        return int(self.key[0])

    @property
    def tested(self) -> bool:
        return min(self.n_a, self.n_b) >= MIN_TOST_SEEDS


@dataclass
class Comparison:
    experiment: str
    tracking_uri: str
    axes: StudyAxes
    runs_all: pd.DataFrame
    runs: pd.DataFrame  # FINISHED, with a final val/mIoU
    curves: pd.DataFrame
    cells: list[CellComparison]
    deltas: pd.DataFrame  # analysis.gap.delta_curves
    fits: list[ScheduleFit]
    margin: float

    @property
    def synthetic(self) -> bool:
        return bool(self.runs.synthetic.any())


def _pooled(uri: str, run_ids: list[str]) -> tuple[list[str], np.ndarray] | None:
    """Per-image matrices summed over a backbone's seeds (same images required), or None if unavailable."""
    names, total = None, None
    for rid in run_ids:
        try:
            n, mats = per_image_confusions(uri, rid)
        except AnalysisError:
            return None
        if names is not None and n != names:
            return None
        names, total = n, mats if total is None else total + mats
    return (names, total) if names is not None else None


def compare_cells(runs: pd.DataFrame, uri: str, axes: StudyAxes, margin: float, n_boot: int) -> list[CellComparison]:
    """a vs b in every cell that has both: Welch TOST over seeds and the paired image bootstrap."""
    out = []
    for key, a, b in iter_cells(runs, axes):
        boots = [None, None]
        pooled_a, pooled_b = _pooled(uri, list(a.run_id)), _pooled(uri, list(b.run_id))
        if pooled_a and pooled_b and pooled_a[0] == pooled_b[0]:
            boots = [
                bootstrap_miou_delta(pooled_a[1], pooled_b[1], n_boot=n_boot, seed_metric=s) for s in (False, True)
            ]
        tosts = [tost_equivalence(a[col].to_numpy(), b[col].to_numpy(), margin) for col in ("miou", "miou_void_as_fp")]
        out.append(CellComparison(key, cell_label(axes, key), len(a), len(b), *tosts, *boots))
    return out


def compare(experiment: str, tracking_uri: str, margin: float = 0.5, n_boot: int = 2000) -> Comparison:
    """Everything the verdict rests on, read from the store."""
    runs_all = runs_frame(tracking_uri, experiment)
    runs = runs_all[runs_all.status == "FINISHED"].dropna(subset=["miou"])
    if runs.empty:
        raise AnalysisError(f"experiment {experiment!r} has no FINISHED run with {VAL_MIOU} yet")
    try:
        grid = sweep_axes(tracking_uri, experiment)
    except ExperimentsError as err:
        raise AnalysisError(str(err)) from None
    axes = study_axes(grid, runs_all)
    curves = curves_frame(tracking_uri, list(runs.run_id), (VAL_MIOU, VAL_MIOU_SEED))
    cells = compare_cells(runs, tracking_uri, axes, margin, n_boot)
    deltas = delta_curves(runs, curves, axes)
    fits = schedule_fits(runs, axes)
    return Comparison(experiment, tracking_uri, axes, runs_all, runs, curves, cells, deltas, fits, margin)


def _direction(delta: float) -> str:
    return f"{abs(delta):.2f} points {'above' if delta > 0 else 'below'}" if delta else "level with"


def verdict_line(c: CellComparison, axes: StudyAxes, synthetic: bool) -> str:
    """One sentence per cell, saying no more than the data support."""
    t, a, b = c.tost, *axes.delta_name.split(" − ")
    text = f"at {c.label} {a} is {_direction(t.delta)} {b}"
    if not math.isnan(t.ci90_low):
        text += f" (90% CI {t.ci90_low:+.2f}…{t.ci90_high:+.2f} over seeds"
    else:
        text += " (no interval over seeds"
    if c.bootstrap is not None:
        text += f"; 95% CI {c.bootstrap.ci_low:+.2f}…{c.bootstrap.ci_high:+.2f} over {c.bootstrap.n_images} images"
    text += f"; {c.n_a} vs {c.n_b} seeds)"
    if not c.tested:
        text += f": fewer than {MIN_TOST_SEEDS} seeds per backbone, so no equivalence claim is made"
    elif t.equivalent:
        text += f": equivalent within ±{t.margin:g} (TOST p = {t.p_value:.3f})"
    else:
        text += f": NOT shown equivalent within ±{t.margin:g} (TOST p = {t.p_value:.3f})"
    if synthetic:
        text += " — synthetic data: this exercises the pipeline and says nothing about Cityscapes"
    return text + "."


def verdict_lines(c: Comparison) -> list[str]:
    """The verdict as markdown lines: one per cell, the schedule fit, then what is missing or unfinished."""
    lines = []
    if not c.cells:
        lines.append("No cell has finished runs of both backbones yet: no comparison can be made.")
    lines += [f"- {verdict_line(cell, c.axes, c.synthetic)}" for cell in c.cells]
    lines += [f"- {fit_sentence(fit, c.axes)}" for fit in c.fits]
    missing = missing_cells(c.runs_all, c.runs, c.axes)
    if missing:
        lines.append(f"- Missing cells (no FINISHED run): {', '.join(missing)}.")
    if c.synthetic:
        lines.append("- **These runs use synthetic data**: the numbers test the pipeline, not the question.")
    unfinished = c.runs_all[c.runs_all.status != "FINISHED"]
    if len(unfinished):
        lines.append(
            f"- {len(unfinished)} run(s) not FINISHED are left out: "
            + ", ".join(f"{r.run_name} ({r.status})" for r in unfinished.itertuples())
            + "."
        )
    return lines


def _equivalent(cell: CellComparison, tost: TostResult) -> str:
    if not cell.tested:
        return f"not tested (n<{MIN_TOST_SEEDS})"
    return "yes" if tost.equivalent else "not shown"


def statistics_table(c: Comparison) -> pd.DataFrame:
    """One row per cell and metric; 'equivalent' says exactly what the verdict says."""
    rows = []
    for cell in c.cells:
        for metric, tost, boot in (
            ("official", cell.tost, cell.bootstrap),
            ("void as FP (seed's evaluator)", cell.tost_void_as_fp, cell.bootstrap_void_as_fp),
        ):
            tested = cell.tested
            rows.append(
                {
                    "cell": cell.label,
                    "metric": metric,
                    "seeds a/b": f"{cell.n_a}/{cell.n_b}",
                    f"Δ mIoU {c.axes.delta_name} (seeds)": tost.delta,
                    "90% CI over seeds": "–"
                    if math.isnan(tost.ci90_low)
                    else f"{tost.ci90_low:+.2f}…{tost.ci90_high:+.2f}",
                    "TOST p": tost.p_value if tested else float("nan"),
                    "equivalent": _equivalent(cell, tost),
                    "Δ mIoU (images)": boot.delta if boot else float("nan"),
                    "bootstrap 95% CI": f"{boot.ci_low:+.2f}…{boot.ci_high:+.2f}" if boot else "–",
                    "images": boot.n_images if boot else 0,
                }
            )
    return pd.DataFrame(rows)
