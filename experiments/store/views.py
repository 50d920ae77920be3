"""How MLflow's UI opens an experiment: the classic runs view, grouped by backbone × schedule, listed in its Views menu.

Read from the UI bundle of MLflow 3.17 (mlflow/server/js/build): ``?workflowType=machine_learning`` in the URL
opens the "Model training" layout (runs, not GenAI traces; 3.17's sidebar switch decides it, else the experiment
tag ``mlflow.experimentKind``, set too). An experiment tag ``mlflow.sharedViewState.<id>`` holding the envelope
``{"name", "createdAt", "updatedAt", "state"}`` (``state``: the runs table's view state as JSON text) is a saved
view: the runs page's "Views" menu lists it by name and opens it, and ``?viewStateShareKey=<id>`` applies it (a tag
holding the bare view state is applied by the URL only, never listed). The view state takes the search facets
(``searchFilter``, ``orderByKey``, ``orderByAsc``) and the table's UI state (``selectedColumns``, ``columnOrder``,
``columnWidths``, ``groupBy``, …); ``groupBy`` = ``{"aggregateFunction": "average", "groupByKeys": [{"mode":
"tag", "groupByData": <tag>}, …]}`` folds the runs into one row per tag combination with the metrics' mean, each
group expanded unless ``groupsExpanded`` says otherwise. 3.17 has no per-experiment default view.
"""

from __future__ import annotations

import json
import time

from deeplab.tracking import COST_DEVICE_HOURS, DATA_TIME, STEP_TIME, VAL_MIOU, VAL_MIOU_SEED
from experiments.axes import SHORT_NAMES

EXPERIMENT_KIND = "mlflow.experimentKind"
CLASSIC_KIND = "custom_model_development"  # shown as "Machine learning"; GenAI kinds land on traces
VIEW_KEY = "res50-vs-res101"  # the share key in the runs page URL and the saved view's id
VIEW_NAME = "res50 vs res101: backbone × schedule"  # its name in the Views menu
SHARED_VIEW = "mlflow.sharedViewState."
BACKBONE, ITERATIONS = SHORT_NAMES["model.backbone"], SHORT_NAMES["train.iterations"]  # the runs' axis tags
_TAGS = [f"tags.`{name}`" for name in SHORT_NAMES.values()]
_METRICS = [f"metrics.`{VAL_MIOU}`", f"metrics.`{VAL_MIOU_SEED}`"]
# what a run cost, and whether its GPUs waited for data (data time near the step time: starved)
_COST = [f"metrics.`{COST_DEVICE_HOURS}`", f"metrics.`{DATA_TIME}`", f"metrics.`{STEP_TIME}`"]
_DATASETS = "attributes.`Dataset`"  # the datasets a run read (synthetic/… or cityscapes/…): one of the UI's defaults
RUNS_VIEW = {
    # child runs only (they carry config_hash): the parent run would fold them under a [+]
    "searchFilter": "tags.config_hash LIKE '%'",
    "orderByKey": f"tags.`{BACKBONE}`",
    "orderByAsc": True,
    "selectedColumns": _METRICS[:1] + _TAGS + _METRICS[1:] + _COST + [_DATASETS],
    # the UI applies widths only to columns it is given an order for (run name first, then the answer);
    # at its default width a metric shows 8 characters
    "columnOrder": ["attributes.`Run Name`", *_TAGS, *_METRICS, *_COST, _DATASETS, "runDateAndNestInfo", "duration"],
    "columnWidths": {key: 150 for key in _METRICS + _COST},
    # one row per backbone × schedule with the seeds' mean val/mIoU, its seeds listed under it
    "groupBy": {
        "aggregateFunction": "average",
        "groupByKeys": [{"mode": "tag", "groupByData": BACKBONE}, {"mode": "tag", "groupByData": ITERATIONS}],
    },
}
WORKFLOW = "workflowType=machine_learning"  # MLflow 3.17's sidebar switch ignores the experiment kind: the URL wins


def saved_view(name: str, state: dict, now_ms: int | None = None) -> str:
    """A saved view's tag value, as MLflow 3.17's Views menu reads it."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def experiment_view_tags() -> dict[str, str]:
    """The experiment tags that open it in the runs view, with :data:`RUNS_VIEW` as a saved view."""
    return {EXPERIMENT_KIND: CLASSIC_KIND, SHARED_VIEW + VIEW_KEY: saved_view(VIEW_NAME, RUNS_VIEW)}


def runs_page_url(server: str, experiment_id: str) -> str:
    """The experiment's runs table in the preset view (``server``: the UI's base URL)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW}&viewStateShareKey={VIEW_KEY}"


def run_page_url(server: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page (its description first), or one of its artifacts shown in the UI."""
    tail = f"/artifacts/{artifact}" if artifact else ""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{tail}?{WORKFLOW}"
