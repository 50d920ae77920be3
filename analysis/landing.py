"""The answer where researchers look in MLflow: the experiment's description (its landing page, one line), the
sweep parent run's description and summary metrics, and the report's files as the run's artifacts. Published by
`analysis report` through ``experiments.store.publish_to_run``; every word, name and artifact path comes from here
and analysis.cells' convention.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from analysis.cells import DELTA_DEFINITION, DELTA_METRIC, DELTA_NAME, CellKey, StudyAxes
from analysis.comparison import MIN_TOST_SEEDS, Comparison, verdict_lines
from analysis.looks import CellLooks
from experiments.axes import axis_text
from experiments.store import artifact_link, publish_to_run, sweep_parent

# MLflow 3.17 shows an experiment's description folded to its first line (32 px high) until it is expanded: the
# headline is one short line (about 150 characters fit beside the sidebar in a 1280 px wide window, 120 in 1100 px)
HEADLINE_MAX = 120
REPORT_DIR = "report"  # artifact folder on the parent run


def cell_metric_name(axes: StudyAxes, key: CellKey) -> str:
    """``iterations-4`` (then ``_weights-none`` per further axis): the cell's label (``analysis.cells.cell_label``)
    in the characters MLflow takes in a metric name."""
    name = "_".join(f"{axes.names[k]}-{axis_text(v)}" for k, v in key.values)
    return re.sub(r"[^\w\-. :/]", "_", name)


def _answer(c: Comparison) -> tuple[float, str, float, float, str, int]:
    """The headline's cell (the longest schedule): Δ, interval name and bounds, equivalence status, schedule."""
    cl: CellLooks | None = c.looks[-1] if c.looks else None
    if cl is not None and cl.looks:
        last = cl.looks[-1]
        status = "shown" if last.equivalent else "not shown"
        if not (last.equivalent or last.futile or last.k >= len(cl.current.looks)):
            status = f"open after look {last.k} of {len(cl.current.looks)}"
        return last.delta, "RCI", last.rci_low, last.rci_high, status, cl.key.iterations
    cell = c.cells[-1]
    t = cell.tost
    status = f"untested (n<{MIN_TOST_SEEDS})" if not cell.tested else "shown" if t.equivalent else "not shown"
    if cl is not None:  # a sequential design before its first look: the seeds so far, and no claim
        status = f"untested: look 1 needs {cl.design.looks[0]} seeds"
    return t.delta, "90% CI", t.ci90_low, t.ci90_high, status, cell.iterations


def headline(c: Comparison) -> str:
    """One line (≤ HEADLINE_MAX characters): Δ with its interval over seeds at the longest schedule, and whether
    equivalence is shown; the sequential design's repeated CI when the spec plans one."""
    warn = "synthetic: " if c.synthetic else ""
    if not c.cells:
        return f"{warn}Δ = {DELTA_NAME}: no cell has finished runs of both backbones yet"
    delta, name, low, high, status, iterations = _answer(c)
    interval = f"{name} {low:+.2f}…{high:+.2f}" if not math.isnan(low) else f"no {name}"
    more = f"; +{len(c.cells) - 1} cell{'s' * (len(c.cells) > 2)}" if len(c.cells) > 1 else ""
    # "it.", not the tags' "iterations=": HEADLINE_MAX leaves no room for the longer spelling
    text = f"{warn}Δ = {DELTA_NAME}: {delta:+.2f} mIoU ({interval}) at {iterations} it.; equivalence ±{c.margin:g} "
    return text + status + more


def description(c: Comparison, report_link: str, out: Path) -> str:
    """The parent run's description: the headline, the synthetic warning, the convention, the verdict's lines word
    for word, and where the full report is."""
    lines = [f"**{headline(c)}**", ""]
    if c.synthetic:
        lines += ["> ⚠ **Synthetic data**: these runs test the pipeline; they say nothing about Cityscapes.", ""]
    lines += [f"{DELTA_DEFINITION}, in mIoU points; intervals are over seeds.", ""]
    lines += [line for line in verdict_lines(c) if "synthetic data**" not in line]
    lines += [
        "",
        f"Metrics `{DELTA_METRIC}/<cell>` with `…/ci90_low`, `…/ci90_high` (and `…/rci_low`, `…/rci_high` of a "
        "sequential design's last look) are on this run.",
        f"Full report: [{REPORT_DIR}/report.html]({report_link}) in this run's Artifacts (tables, figures, "
        f"statistics, the public evidence), also `{out}`.",
    ]
    return "\n".join(lines)


def summary_metrics(c: Comparison) -> dict[str, float]:
    """Metric name → value: points to 2 decimals as the report prints them (the UI shows every digit), or a count;
    NaN ones (an interval from one seed) are left out."""
    out: dict[str, float] = {}
    for cell in c.cells:
        name = cell_metric_name(c.axes, cell.key)
        t = cell.tost
        out |= {f"{DELTA_METRIC}/{name}": t.delta, f"{DELTA_METRIC}/{name}/ci90_low": t.ci90_low}
        out[f"{DELTA_METRIC}/{name}/ci90_high"] = t.ci90_high
        out |= {f"seeds/{name}/{c.axes.a}": cell.n_a, f"seeds/{name}/{c.axes.b}": cell.n_b}
    for cl in c.looks:
        if cl.looks:
            name, last = cell_metric_name(c.axes, cl.key), cl.looks[-1]
            out |= {f"{DELTA_METRIC}/{name}/rci_low": last.rci_low, f"{DELTA_METRIC}/{name}/rci_high": last.rci_high}
            out |= {f"sequential/{name}/look": last.k, f"sequential/{name}/seeds_per_backbone": last.n}
    return {k: round(float(v), 2) for k, v in out.items() if not math.isnan(v)}


def report_artifacts(out: Path, files: list[Path]) -> list[tuple[Path, str]]:
    """(local file, artifact folder) of the report's own ``files`` in ``out`` (never the folder's other files),
    each under ``report/`` at its place below ``out``."""
    out = Path(out)
    return [(Path(f), "/".join([REPORT_DIR, *Path(f).parent.relative_to(out).parts])) for f in files]


def publish_to_mlflow(c: Comparison, out: Path, files: list[Path]) -> None:
    """The headline, the verdict, Δ per cell and the report's ``files`` (those it wrote in ``out``) onto the
    sweep's parent run."""
    found = sweep_parent(c.tracking_uri, c.experiment)
    if found is None:
        print(f"MLflow: experiment {c.experiment!r} has no single sweep parent run (imported runs?): not published")
        return
    eid, run_id = found
    link = artifact_link(eid, run_id, f"{REPORT_DIR}/report.html")
    publish_to_run(
        c.tracking_uri, eid, run_id, experiment_note=headline(c), run_note=description(c, link, out),
        metrics=summary_metrics(c), artifacts=report_artifacts(out, files),
    )  # fmt: skip
    print(f"MLflow: verdict, Δ metrics and report published to the sweep's parent run {run_id}")
