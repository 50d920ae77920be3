"""The comparison the report and the notebook share: cells from the sweep's axes, per-cell tests, Δ curves,
the gap-vs-schedule fit and the verdict in words (all mIoU in points)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.cells import (
    REPLICATE,
    CellKey,
    StudyAxes,
    cell_label,
    check_one_configuration,
    iter_cells,
    missing_cells,
    study_axes,
)
from analysis.errors import AnalysisError
from analysis.frames import curves_frame, per_image_confusions, runs_frame
from analysis.gap import ScheduleFit, delta_curves, fit_sentence, schedule_fits
from analysis.html import md_escape
from analysis.looks import CellLooks, cell_looks, decision_sentence, run_costs, sequential_design, study_spec
from analysis.stats import BootstrapResult, TostResult, bootstrap_miou_delta, tost_equivalence
from deeplab.tracking import VAL_MIOU, VAL_MIOU_SEED
from experiments.errors import ExperimentsError
from experiments.sequential import SequentialDesign
from experiments.store import sweep_axes

MIN_TOST_SEEDS = 3
DEFAULT_MARGIN = 0.5  # mIoU points, when neither the caller nor the spec's analysis.margin says


@dataclass
class CellComparison:
    key: CellKey
    label: str
    n_a: int
    n_b: int
    tost: TostResult
    tost_void_as_fp: TostResult
    bootstrap: BootstrapResult | None
    bootstrap_void_as_fp: BootstrapResult | None

    @property
    def iterations(self) -> int:
        return self.key.iterations

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
    design: SequentialDesign | None = None  # the spec's analysis.sequential
    looks: list[CellLooks] = field(default_factory=list)  # recomputed from the runs, one entry per cell
    spec_note: str = ""  # where the spec (and so the design) came from, or why there is none

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


def compare(
    experiment: str, tracking_uri: str, margin: float | None = None, n_boot: int = 2000, spec: str | None = None
) -> Comparison:
    """Everything the verdict rests on, read from the store. ``margin``: the spec's analysis.margin unless given
    (0.5 without either); ``spec``: the sweep spec's path when the parent run's ``sweep.spec`` is not readable."""
    runs_all = runs_frame(tracking_uri, experiment)
    runs = runs_all[runs_all.status == "FINISHED"].dropna(subset=["miou"])
    if runs.empty:
        raise AnalysisError(f"experiment {experiment!r} has no FINISHED run with {VAL_MIOU} yet")
    try:
        grid = sweep_axes(tracking_uri, experiment)
    except ExperimentsError as err:
        raise AnalysisError(str(err)) from None
    study, spec_note = study_spec(tracking_uri, experiment, spec)
    if margin is None:
        margin = study.margin if study is not None and study.margin is not None else DEFAULT_MARGIN
    axes = study_axes(grid, runs_all)
    check_one_configuration(runs, axes)
    curves = curves_frame(tracking_uri, list(runs.run_id), (VAL_MIOU, VAL_MIOU_SEED))
    cells = compare_cells(runs, tracking_uri, axes, margin, n_boot)
    deltas = delta_curves(runs, curves, axes)
    fits = schedule_fits(runs, axes)
    design = sequential_design(study, margin)
    looks = []
    if design is not None and study is not None:
        grid_seeds = grid.get(REPLICATE) or sorted(runs.seed.unique())
        looks = cell_looks(runs, axes, design, grid_seeds, run_costs(runs_all, study))
    return Comparison(
        experiment, tracking_uri, axes, runs_all, runs, curves, cells, deltas, fits, margin, design, looks, spec_note
    )


def verdict_line(c: CellComparison, axes: StudyAxes, synthetic: bool, sequential: bool = False) -> str:
    """One sentence per cell, saying no more than the data support: Δ with its interval over seeds (the answer to
    "would other seeds give the same gap?"); the bootstrap over images (evaluation noise only) stays out."""
    t = c.tost
    text = f"at {md_escape(c.label)}: Δ = {axes.delta_name} = {t.delta:+.2f} points, {axes.ahead(t.delta)}"
    if not math.isnan(t.ci90_low):
        text += f" (90% CI {t.ci90_low:+.2f}…{t.ci90_high:+.2f} over seeds"
    else:
        text += " (no interval over seeds"
    text += f"; {c.n_a} vs {c.n_b} seeds"
    text += ", all read as one fixed look: the sequential analysis above answers)" if sequential else ")"
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
    """The verdict as markdown lines: the sequential decision of each cell (when the spec plans one), one line per
    cell over all seeds, the schedule fit, then what is missing or unfinished."""
    lines = []
    if not c.cells:
        lines.append("No cell has finished runs of both backbones yet: no comparison can be made.")
    # a sequential study's answer is its looks' repeated CI; every finished seed read as one fixed look is not
    lines += [f"- **The answer** {decision_sentence(cl, c.axes)}" for cl in c.looks]
    lines += [f"- {verdict_line(cell, c.axes, c.synthetic, sequential=bool(c.looks))}" for cell in c.cells]
    lines += [f"- {fit_sentence(fit, c.axes)}" for fit in c.fits]
    missing = missing_cells(c.runs_all, c.runs, c.axes)
    if missing:
        lines.append(f"- Missing cells (no FINISHED run): {', '.join(missing)}.")
    if c.synthetic:
        lines.append("- **These runs use synthetic data**: the numbers test the pipeline, not the question.")
    broken = c.runs_all[c.runs_all.get("miou_nonfinite", False) == True]  # noqa: E712 (a pandas mask)
    if len(broken):
        lines.append(
            f"- {len(broken)} run(s) with a non-finite final {VAL_MIOU} are left out: "
            + ", ".join(md_escape(r.run_name) for r in broken.itertuples())
            + "."
        )
    unfinished = c.runs_all[c.runs_all.status != "FINISHED"]
    if len(unfinished):
        lines.append(
            f"- {len(unfinished)} run(s) not FINISHED are left out: "
            + ", ".join(f"{md_escape(r.run_name)} ({r.status})" for r in unfinished.itertuples())
            + "."
        )
    return lines


def _equivalent(cell: CellComparison, tost: TostResult) -> str:
    if not cell.tested:
        return f"not tested (n<{MIN_TOST_SEEDS})"
    return "yes" if tost.equivalent else "not shown"


SEED_CI = "90% CI over seeds (the answer)"
IMAGE_CI = "95% CI over images (evaluation noise only)"
STATISTICS_NOTE = (
    "**Which interval answers the question.** The 90% CI over seeds is how far another set of seeds could move Δ: "
    "the TOST and the verdict use it. The paired bootstrap over validation images keeps each run's model fixed and "
    "resamples only which images are scored: it measures evaluation noise, is usually narrower, and says nothing "
    "about seeds; it is shown for that alone."
)


def statistics_table(c: Comparison) -> pd.DataFrame:
    """One row per cell and metric; 'equivalent' says exactly what the verdict says; the image bootstrap's columns
    are labelled as the evaluation noise they are."""
    rows = []
    short = c.axes.delta_name.split(" − ")
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
                    f"seeds {'/'.join(short)}": f"{cell.n_a}/{cell.n_b}",
                    f"Δ {c.axes.delta_name} (seed means)": f"{tost.delta:+.2f}",
                    SEED_CI: "–" if math.isnan(tost.ci90_low) else f"{tost.ci90_low:+.2f}…{tost.ci90_high:+.2f}",
                    "TOST p": tost.p_value if tested else float("nan"),
                    "equivalent": _equivalent(cell, tost),
                    "Δ on pooled images": f"{boot.delta:+.2f}" if boot else "–",
                    IMAGE_CI: f"{boot.ci_low:+.2f}…{boot.ci_high:+.2f}" if boot else "–",
                    "images": boot.n_images if boot else 0,
                }
            )
    return pd.DataFrame(rows)
