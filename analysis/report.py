"""`analysis report`: provenance, verdict, numbered figures, the statistics and the long tables on res50 vs
res101, beside the published numbers, and the public evidence at the end (mIoU in points).

Every link in report.html works inside MLflow's artifact viewer, which shows the page from a blob: URL in a
sandboxed frame: a relative link there leads nowhere (a blank pane) and a new tab is refused, so the report links
only within itself (the public evidence is its last section) or to absolute addresses.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from markdown.extensions.toc import slugify

from analysis import figures
from analysis.cells import DELTA_DEFINITION
from analysis.comparison import STATISTICS_NOTE, Comparison, compare, statistics_table, verdict_lines
from analysis.deviations import deviations_section
from analysis.evidence_report import TITLE as EVIDENCE_TITLE
from analysis.evidence_report import section_of, write_evidence
from analysis.frames import per_class_frame
from analysis.html import PAGES, write_pages
from analysis.html import markdown_table as _table
from analysis.landing import publish_to_mlflow
from analysis.looks import looks_table
from analysis.provenance import provenance_lines, run_link
from analysis.published import published_deeplabv3plus
from analysis.stats import seed_summary
from deeplab.data import cost as data_cost

__all__ = ["verdict_lines", "write_report"]
EVIDENCE = "evidence"  # out/evidence: the evidence report on its own (`analysis evidence`'s files)


def write_report(
    experiment: str, tracking_uri: str, out: Path, margin: float | None = None, n_boot: int = 2000,
    spec: str | None = None,
) -> Path:  # fmt: skip
    """Write ``out/report.md``, ``out/report.html`` (self-contained) and the figures; returns report.md's path.
    ``margin``: the spec's analysis.margin unless given; ``spec``: the sweep spec, when its parent run's is not
    readable here. ``out`` may hold other files: they are left alone, and only the report's own are published."""
    out = Path(out)
    c = compare(experiment, tracking_uri, margin, n_boot, spec)
    published = published_deeplabv3plus()
    captions, figure_files = write_figures(c, published, out / "figures")
    out.mkdir(parents=True, exist_ok=True)
    evidence = write_evidence(out / EVIDENCE, margin=c.margin)  # the public evidence, beside the sweep's results
    text = _render(c, published, captions) + section_of(evidence.report.read_text(), EVIDENCE)
    report = write_pages(text, out)
    publish_to_mlflow(c, out, [*(out / name for name in PAGES), *figure_files, *evidence.files])
    return report


def _band_words(n: int) -> str:
    return "mean with its 95% CI over seeds" if n >= figures.MIN_BAND_SEEDS else "mean, and each seed (n < 3)"


def write_figures(c: Comparison, published: pd.DataFrame, out: Path) -> tuple[list[tuple[str, str]], list[Path]]:
    """Every figure of the report: (file stem, caption) in their numbered order, and the files written."""
    n = int(c.runs.groupby(["backbone", *c.axes.cell_columns]).size().min())
    per_class = per_class_frame(c.tracking_uri, list(c.runs.run_id))
    band = (
        "Welch 95% CI of the difference of the seed means"
        if n >= figures.MIN_BAND_SEEDS
        else f"every {c.axes.delta_name.replace(' − ', '-seed − ')}-seed difference as dots (seeds are unpaired; "
        "n < 3, so no band)"
    )
    captions, files = [], []
    if c.looks:
        files += figures.looks_figure(c.looks, out, c.axes)
        captions.append(
            (
                "looks",
                f"the sequential design's looks: Δ ({c.axes.delta_name}) of the final val mIoU with its repeated CI "
                "at each look; grey: ±margin; green ticks: the Δ̂ that stops for equivalence; red dots: futility",
            )
        )
    files += figures.delta_curves_figure(c.deltas, out, c.axes, c.margin)
    files += figures.curves_figure(c.runs, c.curves, out, c.axes)
    files += figures.final_vs_schedule_figure(c.runs, published, out, c.axes)
    files += figures.per_class_delta_figure(per_class, c.runs, out, c.axes)
    files += figures.cost_figure(c.runs, out)
    published_words = (
        "synthetic data, so the published Cityscapes numbers are left out"
        if c.synthetic
        else "with the published points"
    )
    captions += [
        ("delta_curves", f"Δ val mIoU ({c.axes.delta_name}) along the iterations of each cell: {band}; grey: ±margin"),
        ("curves", f"val mIoU vs iteration per backbone: {_band_words(n)}"),
        ("final_vs_schedule", f"final mIoU vs schedule length ({_band_words(n)}), {published_words}"),
        ("per_class_delta", f"per-class Δ IoU ({c.axes.delta_name}) at the longest schedule; hatched: both 0"),
        ("cost", "final mIoU vs compute; parameters [M] and GFLOPs on their own axes"),
    ]
    return captions, files


def _data_cost_line(c: Comparison) -> str:
    if c.runs.empty:
        return "- data: no compared runs"
    data = c.runs.iloc[0]["config"].data
    return f"- {data_cost.describe(data, data_cost.FORK_V100_S_PER_IT, 'the seed fork on V100')}"


def _method(c: Comparison) -> str:
    sequential = ""
    if c.design is not None:
        d = c.design
        sequential = (
            f"Sequential design ({c.spec_note}): looks at {'/'.join(map(str, d.looks))} seeds per backbone, "
            f"{d.spending} spending of α = {d.alpha:g} per side, repeated CIs"
            f"{', non-binding futility from look 2' if d.futility else ''}"
            f"{f', the first look may raise the maximum to {d.cap} seeds' if d.pilot else ''}; its last look's "
            "repeated CI is the answer (analysis.sequential). "
        )
    return (
        f"{DELTA_DEFINITION}, in mIoU points. {sequential}Equivalence: Welch TOST on the per-seed final mIoU with "
        f"margin ±{c.margin:g} points (α = 0.05; the 90% CI over seeds inside the margin), made only with ≥ 3 seeds "
        "per backbone. The paired bootstrap over validation images (seeds pooled) measures evaluation noise only "
        "and never enters the verdict. Gap vs schedule: OLS of per-run final mIoU on backbone × log2(iterations). "
        "Protocol, both sides: each run's final model (its last validation), nothing selected on val. "
        f"Cells: {', '.join(c.axes.cell_keys)} (from the sweep's recorded grid); seeds are replicates."
    )


def _looks_section(c: Comparison) -> list[str]:
    if c.design is None:
        return ["## Sequential looks", "", f"None: {c.spec_note or 'the spec plans no sequential design'}.", ""]
    return [
        "## Sequential looks",
        "",
        "Recomputed here from each run's final val mIoU, seeds in the grid's order (a seed counts once both "
        "backbones finished it). The repeated CI at look k has level 1 − 2p_k; the z boundary is Φ⁻¹(1 − p_k) "
        "(Lan-DeMets spending), p_k turned into a t critical value at the look's Welch df.",
        "",
        _table(looks_table(c.looks, c.axes)) if any(cl.looks for cl in c.looks) else "No look reached yet.",
        "",
    ]


def _render(c: Comparison, published: pd.DataFrame, captions: list[tuple[str, str]]) -> str:
    lines = [f"# Does a ResNet-50 backbone match ResNet-101? — experiment `{c.experiment}`", ""]
    lines += [*provenance_lines(c.tracking_uri, c.experiment, c.runs_all), _data_cost_line(c), "", "## Verdict", ""]
    lines += verdict_lines(c)
    evidence = slugify(EVIDENCE_TITLE, "-")
    lines += ["", _method(c), "", f"What public evidence says, with no sweep: [the last section](#{evidence}).", ""]
    lines += ["## Figures", ""]
    for i, (name, caption) in enumerate(captions, 1):
        lines += [f"![Figure {i}: {caption}](figures/{name}.png)", "", f"**Figure {i}.** {caption}.", ""]
    by = ["backbone", *c.axes.cell_columns]
    lines += _looks_section(c)
    lines += ["## Statistics", "", STATISTICS_NOTE, "", _table(statistics_table(c)), ""]
    lines += ["## Final val mIoU (single scale, official metric), over seeds", "", _table(seed_summary(c.runs, by=by))]
    lines += [
        "",
        "## The seed's evaluator (void predictions counted as false positives)",
        "",
        "The seed's March-2020 evaluator counted predictions on void pixels into the union. Under it:",
        "",
        _table(seed_summary(c.runs, "miou_void_as_fp", by=by)),
        "",
        "## Published numbers (DeepLabV3+, single scale)",
        "",
        _table(published[["source", "backbone", "output_stride", "crop", "iterations", "miou", "selection", "note"]]),
        "",
    ]
    lines += deviations_section(c.runs)
    columns = ["run_name", "backbone", *c.axes.cell_columns, "seed", "status", "miou", "miou_void_as_fp"]
    table = c.runs_all[[*dict.fromkeys(columns), "config_hash"]].assign(
        run=[run_link(c.tracking_uri, r.experiment_id, r.run_id) for r in c.runs_all.itertuples()]
    )
    lines += ["## Runs (mIoU in points)", "", _table(table, markup=("run",)), ""]
    return "\n".join(lines)
