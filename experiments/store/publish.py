"""A report published where researchers look: on its sweep's parent run, in MLflow's UI.

The parent run gets a description (``mlflow.note.content``), summary metrics at step 0, and the report's own files
(report.md, report.html, the figures; never other files of its folder) as artifacts under ``report/``; the
experiment's description is a one-line headline. What they say
is the caller's (``analysis.landing``): this module speaks MLflow only. A re-run replaces what an earlier one wrote:
the descriptions are overwritten, each metric is logged at step 0 again (the newest point is the one the UI shows;
the history keeps one point per publication) and artifacts of the same name are overwritten.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow.entities import Metric

from experiments.store.client import open_client
from experiments.store.sweeps import PARENT_ROLE
from experiments.store.views import experiment_view_tags, run_page_url
from experiments.store.write import find_experiment, log, log_artifact, search

NOTE = "mlflow.note.content"  # the description MLflow's UI shows on a run and an experiment
REPORT_DIR = "report"  # artifact folder on the parent run


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


def report_link(experiment_id: str, run_id: str) -> str:
    """The UI's address of the published report.html, relative to the UI's page (a description's link)."""
    return "#" + run_page_url("", experiment_id, run_id, f"{REPORT_DIR}/report.html").split("#", 1)[1]


def publish_report(
    uri: str, experiment: str, *, headline: str, description: Callable[[str], str], metrics: dict[str, float],
    out: Path, files: Sequence[Path],
) -> str | None:  # fmt: skip
    """Publish the report's ``files`` (under ``out``, each kept at its place below it) to the sweep's parent run;
    returns its id, or None when there is no parent. ``headline`` becomes the experiment's description,
    ``description(link to report.html)`` the parent run's."""
    found = report_parent(uri, experiment)
    if found is None:
        return None
    eid, run_id = found
    client = open_client(uri)
    # experiments made before the view tags existed get them here
    for key, value in {**experiment_view_tags(), NOTE: headline}.items():
        client.set_experiment_tag(eid, key, value)
    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    log(uri, run_id, metrics=points, tags={NOTE: description(report_link(eid, run_id))})
    for path in map(Path, files):  # the listed files only: a folder may hold the user's other files
        log_artifact(uri, run_id, path, "/".join([REPORT_DIR, *path.parent.relative_to(out).parts]))
    return run_id
