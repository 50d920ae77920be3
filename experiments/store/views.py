"""How MLflow's UI opens an experiment: the classic runs view with the columns a researcher reads first.

Both are experiment tags read by the UI bundle of MLflow 3 (checked in mlflow/server/js/build of 3.17):
``mlflow.experimentKind`` picks the "Machine learning" layout (runs table, not GenAI traces), and
``mlflow.sharedViewState.<key>`` holds a runs-table view state that ``?viewStateShareKey=<key>`` applies.
"""

from __future__ import annotations

import json

from deeplab.tracking import VAL_MIOU, VAL_MIOU_SEED

EXPERIMENT_KIND = "mlflow.experimentKind"
CLASSIC_KIND = "custom_model_development"  # shown as "Machine learning"; GenAI kinds land on traces
VIEW_KEY = "res50-vs-res101"  # the share key in the runs page URL
SHARED_VIEW = "mlflow.sharedViewState."
RUNS_VIEW = {
    # child runs only (they carry config_hash): the parent run would fold them under a [+]
    "searchFilter": "tags.config_hash LIKE '%'",
    "orderByKey": "tags.`backbone`",
    "orderByAsc": True,
    "selectedColumns": [
        f"metrics.`{VAL_MIOU}`",
        "tags.`backbone`",
        "tags.`iterations`",
        "tags.`seed`",
        f"metrics.`{VAL_MIOU_SEED}`",
        "attributes.`Duration`",
    ],
}


def experiment_view_tags() -> dict[str, str]:
    """The experiment tags that open it in the runs view with :data:`RUNS_VIEW` available."""
    return {EXPERIMENT_KIND: CLASSIC_KIND, SHARED_VIEW + VIEW_KEY: json.dumps(RUNS_VIEW)}


def runs_page_url(server: str, experiment_id: str) -> str:
    """The experiment's runs table with the preset columns (``server``: the UI's base URL)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def run_page_url(server: str, experiment_id: str, run_id: str) -> str:
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
