"""A report published where researchers look: on its sweep's parent run, in MLflow's UI.

The parent run gets the verdict as its description (``mlflow.note.content``), summary metrics in mIoU points,
and report.md, report.html and the figures as artifacts under ``report/``; the experiment's description is the
headline. A re-run replaces what an earlier one wrote: the description is overwritten, each metric is logged at
step 0 again (the newest point is the one the UI shows; the history keeps one point per publication) and
artifacts of the same name are overwritten.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric

from experiments.store.client import open_client
from experiments.store.sweeps import PARENT_ROLE
from experiments.store.views import experiment_view_tags, run_page_url
from experiments.store.write import find_experiment, log, log_artifact, search

NOTE = "mlflow.note.content"  # the description MLflow's UI shows on a run and an experiment
REPORT_DIR = "report"  # artifact folder on the parent run
DELTA = "mIoU_res50_minus_res101"


@dataclass(frozen=True)
class CellSummary:
    """One compared cell: res50 − res101 in mIoU points, its 90% CI over seeds, seeds per side."""

    name: str  # the cell in metric-name characters, e.g. ``40000_iters``
    delta: float
    ci90_low: float
    ci90_high: float
    seeds: dict[str, int]  # backbone → number of finished seeds


def summary_metrics(cells: list[CellSummary]) -> dict[str, float]:
    """Metric name → value: points to 2 decimals as the report prints them (the UI shows every digit), or a
    count; NaN ones (an interval from one seed) are left out."""
    out: dict[str, float] = {}
    for c in cells:
        cell = c.name
        out[f"{DELTA}/{cell}"] = round(c.delta, 2)
        out[f"{DELTA}/{cell}/ci90_low"] = round(c.ci90_low, 2)
        out[f"{DELTA}/{cell}/ci90_high"] = round(c.ci90_high, 2)
        out.update({f"seeds/{cell}/{backbone}": float(n) for backbone, n in c.seeds.items()})
    return {k: float(v) for k, v in out.items() if not math.isnan(v)}


def report_parent(uri: str, experiment: str) -> tuple[str, str] | None:
    """(experiment id, parent run id) of the experiment's sweep: the parent named after the experiment, else its
    only parent; None when there is none (runs imported with ``analysis import-log``) or several."""
    eid = find_experiment(uri, experiment)
    if eid is None:
        return None
    parents = search(uri, eid, f"tags.`sweep.role` = '{PARENT_ROLE}'")
    named = [r for r in parents if r.info.run_name == experiment]
    chosen = named or parents
    return (eid, chosen[0].info.run_id) if len(chosen) == 1 else None


def description(headline: str, verdict_lines: list[str], synthetic: bool, out: Path, report_link: str = "") -> str:
    """The parent run's description: headline, the verdict's lines, the synthetic warning, where the report is
    (``report_link``: the UI's address of the report artifact, relative to the UI's page)."""
    lines = [f"**{headline}**", ""]
    if synthetic:
        lines += ["> ⚠ **Synthetic data**: these runs test the pipeline; they say nothing about Cityscapes.", ""]
    lines += [line for line in verdict_lines if "synthetic data**" not in line]
    lines += [
        "",
        f"Metrics `{DELTA}/<N>_iters` (points, res50 − res101) and their 90% CI are on this run.",
        f"Full report: [{REPORT_DIR}/report.html]({report_link}) in this run's Artifacts (tables, figures, "
        f"statistics), also `{out}`."
        if report_link
        else f"Full report: `{REPORT_DIR}/report.html` in this run's Artifacts, also `{out}`.",
    ]
    return "\n".join(lines)


def publish_report(
    uri: str, experiment: str, *, headline: str, verdict_lines: list[str], cells: list[CellSummary],
    synthetic: bool, out: Path,
) -> str | None:  # fmt: skip
    """Publish the report in ``out`` to the sweep's parent run; returns its id, or None when there is no parent."""
    found = report_parent(uri, experiment)
    if found is None:
        return None
    eid, run_id = found
    client = open_client(uri)
    # experiments made before the view tags existed get them here
    for key, value in {**experiment_view_tags(), NOTE: headline}.items():
        client.set_experiment_tag(eid, key, value)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in summary_metrics(cells).items()]
    link = "#" + run_page_url("", eid, run_id, f"{REPORT_DIR}/report.html").split("#", 1)[1]
    log(uri, run_id, metrics=metrics, tags={NOTE: description(headline, verdict_lines, synthetic, out, link)})
    out = Path(out)
    for name in ("report.md", "report.html"):
        log_artifact(uri, run_id, out / name, REPORT_DIR)
    for folder in ("figures", "evidence"):  # report.html links evidence/report.html
        if (out / folder).is_dir():
            log_artifact(uri, run_id, out / folder, f"{REPORT_DIR}/{folder}")
    return run_id
