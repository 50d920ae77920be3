"""`analysis report`: provenance, verdict, numbered figures, the statistics and the long tables on res50 vs
res101, beside the published numbers (mIoU in points)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.comparison import Comparison, compare, statistics_table, verdict_lines
from analysis.evidence_report import write_evidence
from analysis.frames import per_class_frame
from analysis.html import markdown_table as _table
from analysis.html import write_pages
from analysis.provenance import provenance_lines, run_link
from analysis.published import published_deeplabv3plus
from analysis.stats import seed_summary
from deeplab.data import cost as data_cost
from deeplab.fidelity import deviations_markdown
from deeplab.params import config_from_params
from experiments.store import CellSummary, publish_report

__all__ = ["verdict_lines", "write_report"]
EVIDENCE_LINK = (
    "\n## Public evidence\n\nWhat the seed fork's logs and the published pairs say, with no sweep: "
    "[evidence/report.html](evidence/report.html) ([markdown](evidence/report.md)).\n"
)


def write_report(experiment: str, tracking_uri: str, out: Path, margin: float = 0.5, n_boot: int = 2000) -> Path:
    """Write ``out/report.md``, ``out/report.html`` (self-contained) and the figures; returns report.md's path."""
    out = Path(out)
    c = compare(experiment, tracking_uri, margin, n_boot)
    published = published_deeplabv3plus()
    captions = write_figures(c, published, out / "figures")
    text = _render(c, published, captions) + EVIDENCE_LINK
    out.mkdir(parents=True, exist_ok=True)
    write_evidence(out / "evidence", margin=margin)  # the public evidence, beside the sweep's own results
    write_pages(text, out)
    publish_to_mlflow(c, out)
    return out / "report.md"


def headline(c: Comparison) -> str:
    """One line: res50 − res101 per cell, in points."""
    if not c.cells:
        return f"{c.axes.delta_name} mIoU: no cell has finished runs of both backbones yet"
    deltas = ", ".join(f"{cell.tost.delta:+.2f} at {cell.label}" for cell in c.cells)
    seeds = "/".join(sorted({f"{cell.n_a} vs {cell.n_b}" for cell in c.cells}))
    return f"{c.axes.delta_name} mIoU: {deltas} (points, {seeds} seeds{'; synthetic data' if c.synthetic else ''})"


def cell_metric_name(cell_key: tuple, cell_keys: tuple[str, ...]) -> str:
    """``4_iters`` (then ``_<axis>-<value>`` for each further axis), in the characters MLflow takes in a name."""
    name = f"{int(cell_key[0])}_iters" + "".join(
        f"_{key.rsplit('.', 1)[-1]}-{value}" for key, value in zip(cell_keys[1:], cell_key[1:], strict=True)
    )
    return re.sub(r"[^\w\-. :/]", "_", name)


def publish_to_mlflow(c: Comparison, out: Path) -> None:
    """The verdict, Δ per cell and the report's files onto the sweep's parent run, where the UI shows them."""
    summaries = [
        CellSummary(
            cell_metric_name(cell.key, c.axes.cell_keys),
            cell.tost.delta,
            cell.tost.ci90_low,
            cell.tost.ci90_high,
            {c.axes.a: cell.n_a, c.axes.b: cell.n_b},
        )
        for cell in c.cells
    ]
    run_id = publish_report(
        c.tracking_uri, c.experiment, headline=headline(c), verdict_lines=verdict_lines(c), cells=summaries,
        synthetic=c.synthetic, out=out,
    )  # fmt: skip
    if run_id is None:
        print(f"MLflow: experiment {c.experiment!r} has no single sweep parent run (imported runs?): not published")
    else:
        print(f"MLflow: verdict, Δ metrics and report published to the sweep's parent run {run_id}")


def _band_words(n: int) -> str:
    return "mean with its 95% CI over seeds" if n >= figures.MIN_BAND_SEEDS else "mean, and each seed (n < 3)"


def write_figures(c: Comparison, published: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """Every figure of the report, as (file stem, caption) in their numbered order."""
    n = int(c.runs.groupby(["backbone", *c.axes.cell_columns]).size().min())
    per_class = per_class_frame(c.tracking_uri, list(c.runs.run_id))
    band = (
        "Welch 95% CI of the difference of the seed means"
        if n >= figures.MIN_BAND_SEEDS
        else "every res50-seed − res101-seed difference as dots (seeds are unpaired; n < 3, so no band)"
    )
    figures.delta_curves_figure(c.deltas, out, c.axes, c.margin)
    figures.curves_figure(c.runs, c.curves, out, c.axes)
    figures.final_vs_schedule_figure(c.runs, published, out, c.axes)
    figures.per_class_delta_figure(per_class, c.runs, out, c.axes)
    figures.cost_figure(c.runs, out)
    return [
        ("delta_curves", f"Δ val mIoU ({c.axes.delta_name}) along the iterations of each cell: {band}; grey: ±margin"),
        ("curves", f"val mIoU vs iteration per backbone: {_band_words(n)}"),
        ("final_vs_schedule", f"final mIoU vs schedule length ({_band_words(n)}), with the published points"),
        ("per_class_delta", f"per-class Δ IoU ({c.axes.delta_name}) at the longest schedule; hatched: both 0"),
        ("cost", "final mIoU vs compute; parameters [M] and GFLOPs on their own axes"),
    ]


def deviations_section(runs: pd.DataFrame) -> list[str]:
    """The seed-fidelity table of each distinct config of the compared runs (seeds share one table)."""
    tables: dict[str, list[str]] = {}
    for run in runs.itertuples():
        table = deviations_markdown(config_from_params(run.config_params))
        tables.setdefault(table, []).append(f"{run.backbone} @ {int(run.iterations)}")
    lines = ["## Deviations from the seed", ""]
    for i, (table, names) in enumerate(tables.items(), 1):
        lines += [f"### Config {i}: {', '.join(dict.fromkeys(names))}", "", table, ""]
    return lines


def _data_cost_line(c: Comparison) -> str:
    if c.runs.empty:
        return "- data: no compared runs"
    data = config_from_params(c.runs.iloc[0].config_params).data
    return f"- {data_cost.describe(data, data_cost.FORK_V100_S_PER_IT, 'the seed fork on V100')}"


def _render(c: Comparison, published: pd.DataFrame, captions: list[tuple[str, str]]) -> str:
    lines = [f"# Does a ResNet-50 backbone match ResNet-101? — experiment `{c.experiment}`", ""]
    lines += [*provenance_lines(c.tracking_uri, c.experiment, c.runs_all), _data_cost_line(c), "", "## Verdict", ""]
    lines += verdict_lines(c)
    lines += [
        "",
        f"Equivalence: Welch TOST on the per-seed final mIoU with margin ±{c.margin:g} points (α = 0.05; "
        "the 90% CI inside the margin), made only with ≥ 3 seeds per backbone. Image CI: paired bootstrap over "
        "validation images, seeds pooled. Gap vs schedule: OLS of per-run final mIoU on backbone × log2(iterations). "
        "Protocol, both sides: each run's final model (its last validation), nothing selected on val. "
        f"Cells: {', '.join(c.axes.cell_keys)} (from the sweep's recorded grid); seeds are replicates.",
        "",
        "## Figures",
        "",
    ]
    for i, (name, caption) in enumerate(captions, 1):
        lines += [f"![Figure {i}: {caption}](figures/{name}.png)", "", f"**Figure {i}.** {caption}.", ""]
    by = ["backbone", *c.axes.cell_columns]
    lines += ["## Statistics", "", _table(statistics_table(c)), ""]
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
        _table(
            published[["source", "backbone", "output_stride", "crop", "iterations", "miou", "selection", "note", "url"]]
        ),
        "",
    ]
    lines += deviations_section(c.runs)
    columns = ["run_name", "backbone", *c.axes.cell_columns, "seed", "status", "miou", "miou_void_as_fp"]
    table = c.runs_all[[*dict.fromkeys(columns), "config_hash"]].assign(
        run=[run_link(c.tracking_uri, r.experiment_id, r.run_id) for r in c.runs_all.itertuples()]
    )
    lines += ["## Runs (mIoU in points)", "", _table(table), ""]
    return "\n".join(lines)
