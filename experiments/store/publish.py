"""Notes, summary metrics and artifacts on a sweep's parent run, where MLflow's UI shows them.

The experiment's description and the run's (``mlflow.note.content``), metrics at step 0, and files or folders as
artifacts. What they say, which metrics and which files go where are the caller's (``analysis.landing`` publishes the
report): this module speaks MLflow only. A re-run replaces what an earlier one wrote: the descriptions are
overwritten, each metric is logged at step 0 again (the newest point is the one the UI shows; the history keeps one
point per publication) and artifacts of the same path are overwritten.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from mlflow.entities import Metric

from experiments.store.client import open_client
from experiments.store.sweeps import PARENT_ROLE
from experiments.store.views import experiment_view_tags, run_page_url
from experiments.store.write import find_experiment, log, log_artifact, search

NOTE = "mlflow.note.content"  # the description MLflow's UI shows on a run and an experiment


def sweep_parent(uri: str, experiment: str) -> tuple[str, str] | None:
    """(experiment id, parent run id) of the experiment's sweep: the parent named after the experiment, else its
    only parent; None when there is none (runs imported with ``analysis import-log``) or several."""
    eid = find_experiment(uri, experiment)
    if eid is None:
        return None
    parents = search(uri, eid, f"tags.`sweep.role` = '{PARENT_ROLE}'")
    named = [r for r in parents if r.info.run_name == experiment]
    chosen = named or parents
    return (eid, chosen[0].info.run_id) if len(chosen) == 1 else None


def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    """The UI's address of a run's artifact, relative to the UI's page (a link in a description)."""
    return "#" + run_page_url("", experiment_id, run_id, path).split("#", 1)[1]


def publish_to_run(
    uri: str, experiment_id: str, run_id: str, *, experiment_note: str, run_note: str, metrics: dict[str, float],
    artifacts: Iterable[tuple[Path, str]] = (),
) -> None:  # fmt: skip
    """The experiment's and the run's descriptions, ``metrics`` at step 0 and each (local file or folder, artifact
    path) of ``artifacts`` onto the run."""
    client = open_client(uri)
    # experiments made before the view tags existed get them here
    for key, value in {**experiment_view_tags(), NOTE: experiment_note}.items():
        client.set_experiment_tag(experiment_id, key, value)
    now = int(time.time() * 1000)
    log(uri, run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], tags={NOTE: run_note})
    for local, artifact_path in artifacts:
        log_artifact(uri, run_id, local, artifact_path)
