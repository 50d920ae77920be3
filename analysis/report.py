"""`analysis report`: tables, figures and a verdict in words on res50 vs res101, beside the published numbers."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures
from analysis.errors import AnalysisError
from analysis.evidence_report import write_evidence
from analysis.frames import curves_frame, per_class_frame, per_image_confusions, runs_frame
from analysis.html import markdown_table as _table
from analysis.html import markdown_to_html
from analysis.published import published_deeplabv3plus
from analysis.stats import BootstrapResult, TostResult, bootstrap_miou_delta, seed_summary, tost_equivalence
from deeplab.tracking import VAL_MIOU, VAL_MIOU_SEED
from experiments.store import CellSummary, publish_report

A, B = "resnet50", "resnet101"
EVIDENCE_LINK = (
    "\n## Public evidence\n\nWhat the seed fork's logs and the published pairs say, with no sweep: "
    "[evidence/report.html](evidence/report.html) ([markdown](evidence/report.md)).\n"
)


@dataclass
class CellComparison:
    iterations: int
    n_a: int
    n_b: int
    tost: TostResult
    tost_seed_metric: TostResult
    bootstrap: BootstrapResult | None
    bootstrap_seed_metric: BootstrapResult | None


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


def compare_cells(runs: pd.DataFrame, uri: str, margin: float, n_boot: int = 2000) -> list[CellComparison]:
    """res50 vs res101 at every schedule length that has both."""
    out = []
    for iterations, cell in runs.groupby("iterations"):
        a, b = cell[cell.backbone == A], cell[cell.backbone == B]
        if a.empty or b.empty:
            continue
        boots = [None, None]
        pooled_a, pooled_b = _pooled(uri, list(a.run_id)), _pooled(uri, list(b.run_id))
        if pooled_a and pooled_b and pooled_a[0] == pooled_b[0]:
            boots = [
                bootstrap_miou_delta(pooled_a[1], pooled_b[1], n_boot=n_boot, seed_metric=s) for s in (False, True)
            ]
        out.append(
            CellComparison(
                int(iterations),
                len(a),
                len(b),
                tost_equivalence(a.miou.to_numpy(), b.miou.to_numpy(), margin),
                tost_equivalence(a.miou_void_as_fp.to_numpy(), b.miou_void_as_fp.to_numpy(), margin),
                *boots,
            )
        )
    return out


def _direction(delta: float) -> str:
    return f"{abs(delta):.2f} points {'above' if delta > 0 else 'below'}" if delta else "level with"


def verdict_line(c: CellComparison, synthetic: bool) -> str:
    """One sentence per schedule length, saying no more than the data support."""
    t = c.tost
    text = f"at {c.iterations} iterations res50 is {_direction(t.delta)} res101"
    if not math.isnan(t.ci90_low):
        text += f" (90% CI {t.ci90_low:+.2f}…{t.ci90_high:+.2f} over seeds"
    else:
        text += " (no interval over seeds"
    if c.bootstrap is not None:
        text += f"; 95% CI {c.bootstrap.ci_low:+.2f}…{c.bootstrap.ci_high:+.2f} over {c.bootstrap.n_images} images"
    text += f"; {c.n_a} vs {c.n_b} seeds)"
    if min(c.n_a, c.n_b) < 3:
        text += ": fewer than 3 seeds per backbone, so no equivalence claim is made"
    elif t.equivalent:
        text += f": equivalent within ±{t.margin:g} (TOST p = {t.p_value:.3f})"
    else:
        text += f": NOT shown equivalent within ±{t.margin:g} (TOST p = {t.p_value:.3f})"
    if synthetic:
        text += " — synthetic data: this exercises the pipeline and says nothing about Cityscapes"
    return text + "."


def write_report(experiment: str, tracking_uri: str, out: Path, margin: float = 0.5, n_boot: int = 2000) -> Path:
    """Write ``out/report.md``, ``out/report.html`` (self-contained) and the figures; returns report.md's path."""
    out = Path(out)
    runs_all = runs_frame(tracking_uri, experiment)
    runs = runs_all[runs_all.status == "FINISHED"].dropna(subset=["miou"])
    if runs.empty:
        raise AnalysisError(f"experiment {experiment!r} has no FINISHED run with {VAL_MIOU} yet")
    curves = curves_frame(tracking_uri, list(runs.run_id), (VAL_MIOU, VAL_MIOU_SEED))
    per_class = per_class_frame(tracking_uri, list(runs.run_id))
    summary = seed_summary(runs)
    summary_seed = seed_summary(runs, "miou_void_as_fp")
    published = published_deeplabv3plus()
    cells = compare_cells(runs, tracking_uri, margin, n_boot)
    synthetic = bool(runs.synthetic.any())
    fig_dir = out / "figures"
    figures.curves_figure(runs, curves, fig_dir)
    figures.final_vs_schedule_figure(summary, published, fig_dir)
    figures.per_class_delta_figure(per_class, runs, fig_dir)
    figures.cost_figure(runs, fig_dir)
    text = _render(experiment, runs_all, runs, summary, summary_seed, published, cells, synthetic, margin)
    text += EVIDENCE_LINK
    out.mkdir(parents=True, exist_ok=True)
    write_evidence(out / "evidence", margin=margin)  # the public evidence, beside the sweep's own results
    page = markdown_to_html(text, out)
    for name, content in (("report.html", page), ("report.md", text)):  # report.md last: it marks completion
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        os.replace(tmp, out / name)
    publish_to_mlflow(experiment, tracking_uri, verdict_lines(runs_all, runs, cells, synthetic), cells, synthetic, out)
    return out / "report.md"


def headline(cells: list[CellComparison], synthetic: bool) -> str:
    """One line: res50 − res101 per schedule length, in points."""
    if not cells:
        return "res50 vs res101: no schedule length has finished runs of both backbones yet"
    deltas = ", ".join(f"{c.tost.delta:+.2f} at {c.iterations} iterations" for c in cells)
    seeds = "/".join(sorted({f"{c.n_a} vs {c.n_b}" for c in cells}))
    return f"res50 − res101 mIoU: {deltas} (points, {seeds} seeds{'; synthetic data' if synthetic else ''})"


def publish_to_mlflow(
    experiment: str, uri: str, lines: list[str], cells: list[CellComparison], synthetic: bool, out: Path
) -> None:
    """The verdict, Δ per schedule and the report's files onto the sweep's parent run, where the UI shows them."""
    summaries = [
        CellSummary(c.iterations, c.tost.delta, c.tost.ci90_low, c.tost.ci90_high, {A: c.n_a, B: c.n_b}) for c in cells
    ]
    run_id = publish_report(
        uri, experiment, headline=headline(cells, synthetic), verdict_lines=lines, cells=summaries,
        synthetic=synthetic, out=out,
    )  # fmt: skip
    if run_id is None:
        print(f"MLflow: experiment {experiment!r} has no single sweep parent run (imported runs?): not published there")
    else:
        print(f"MLflow: verdict, Δ metrics and report published to the sweep's parent run {run_id}")


def verdict_lines(
    runs_all: pd.DataFrame, runs: pd.DataFrame, cells: list[CellComparison], synthetic: bool
) -> list[str]:
    """The verdict as markdown lines: one per schedule length, then what is missing, synthetic or unfinished."""
    expected = {(b, i) for b in (A, B) for i in runs_all.iterations.unique()}
    missing = sorted(expected - set(zip(runs.backbone, runs.iterations, strict=True)))
    lines = []
    if not cells:
        lines.append("No schedule length has finished runs of both backbones yet: no comparison can be made.")
    lines += [f"- {verdict_line(c, synthetic)}" for c in cells]
    if missing:
        lines.append(f"- Missing cells (no FINISHED run): {', '.join(f'{b} @ {int(i)}' for b, i in missing)}.")
    if synthetic:
        lines.append("- **These runs use synthetic data**: the numbers test the pipeline, not the question.")
    unfinished = runs_all[runs_all.status != "FINISHED"]
    if len(unfinished):
        lines.append(
            f"- {len(unfinished)} run(s) not FINISHED are left out: "
            + ", ".join(f"{r.run_name} ({r.status})" for r in unfinished.itertuples())
            + "."
        )
    return lines


def _render(experiment, runs_all, runs, summary, summary_seed, published, cells, synthetic, margin) -> str:
    lines = [f"# Does a ResNet-50 backbone match ResNet-101? — experiment `{experiment}`", "", "## Verdict", ""]
    lines += verdict_lines(runs_all, runs, cells, synthetic)
    lines += [
        "",
        f"Equivalence: Welch TOST on the per-seed final mIoU with margin ±{margin:g} points (α = 0.05; "
        "the 90% CI inside the margin). Image CI: paired bootstrap over validation images, seeds pooled. "
        "Protocol, both sides: each run's final model (its last validation), nothing selected on val.",
        "",
    ]
    lines += ["## Final val mIoU (single scale, official metric), mean over seeds", "", _table(summary), ""]
    gaps = [(c.iterations, c.tost.delta, c.tost_seed_metric.delta) for c in cells]
    lines += [
        "## The seed's evaluator",
        "",
        "The seed's March-2020 evaluator counted predictions on void pixels into the union. Under it:",
        "",
        _table(summary_seed),
        "",
    ]
    if gaps:
        lines.append(
            _table(pd.DataFrame(gaps, columns=["iterations", "Δ official", "Δ void as FP (seed's evaluator)"]))
        )
        lines.append("")
    lines += [
        "## Published numbers (DeepLabV3+, single scale)",
        "",
        _table(
            published[["source", "backbone", "output_stride", "crop", "iterations", "miou", "selection", "note", "url"]]
        ),
        "",
        "## Figures",
        "",
    ]
    for name, caption in [
        ("curves", "val mIoU vs iteration (mean ± 95% CI over seeds)"),
        ("final_vs_schedule", "final mIoU vs schedule length, with the published points"),
        ("per_class_delta", "per-class Δ IoU (res50 − res101)"),
        ("cost", "mIoU vs compute; parameters and FLOPs"),
    ]:
        lines += [f"![{caption}](figures/{name}.png)", ""]
    table = runs[["run_name", "backbone", "iterations", "seed", "status", "miou", "miou_void_as_fp", "config_hash"]]
    lines += ["## Runs (mIoU in points)", "", _table(table), ""]
    return "\n".join(lines)
