"""The one home of MLflow I/O: every read and write of the tracking store goes through this package.

Nothing else in experiments/ or analysis/ imports mlflow, except ``experiments.mlflow_tracker`` (the engine's
tracker, which opens its client here too). Writes use MLflow's client only; reads too, except one read-only
query for metric histories, used only on the schema revision it was checked against (read.py).

- uri.py: resolution, parsing and redaction of tracking URIs, reachability
- client.py: ``open_client`` (never creates a sqlite store by accident; creation serialised), ``StoreGone``
- write.py: batches, tags, params, states, experiments, ``record_run`` (idempotent by key)
- mirror.py: a run directory's record mirrored into its MLflow run (idempotent), a record's MLflow identity
- sweeps.py: a sweep's parent run (its grid axes) and child runs, their records
- read.py: run records, metric histories, first points, artifacts
- publish.py: a sweep's parent run, and descriptions, summary metrics and artifacts published onto it
- views.py: the experiment tags and URLs that open MLflow's UI on the runs table with useful columns
"""

from experiments.store.client import StoreGone, open_client
from experiments.store.mirror import (
    PARENT_DIR,
    Mirrored,
    RunGone,
    append_points,
    gone_reason,
    mirror_run,
    read_run_id,
    set_run_status,
    start_record,
    tag_run,
    update_record,
    write_run_id,
)
from experiments.store.publish import artifact_link, publish_to_run, sweep_parent
from experiments.store.read import (
    RunRecord,
    download_artifact,
    first_points,
    metric_histories,
    run_records,
)
from experiments.store.sweeps import (
    GRID_TAG,
    PARENT_ROLE,
    ChildRun,
    NewChild,
    child_dirs,
    child_runs,
    ensure_child_runs,
    ensure_parent_run,
    parent_run,
    sweep_axes,
    update_parent,
)
from experiments.store.uri import (
    check_reachable,
    default_tracking_uri,
    driver_uri,
    is_database,
    redact,
    resolve_tracking_uri,
    sqlite_path,
)
from experiments.store.views import run_page_url, runs_page_url
from experiments.store.write import (
    MAX_PARAM_LENGTH,
    RECORD_KEY,
    TERMINAL,
    Recorded,
    batches,
    ensure_experiment,
    find_experiment,
    log,
    log_artifact,
    mark_run,
    params_of,
    point,
    record_run,
    run_status,
    run_tags,
    set_status,
    set_tags,
    tags_of,
)

__all__ = [
    "GRID_TAG",
    "MAX_PARAM_LENGTH",
    "PARENT_DIR",
    "PARENT_ROLE",
    "RECORD_KEY",
    "TERMINAL",
    "ChildRun",
    "Mirrored",
    "NewChild",
    "Recorded",
    "RunGone",
    "RunRecord",
    "StoreGone",
    "append_points",
    "artifact_link",
    "batches",
    "check_reachable",
    "child_dirs",
    "child_runs",
    "default_tracking_uri",
    "download_artifact",
    "driver_uri",
    "ensure_child_runs",
    "ensure_experiment",
    "ensure_parent_run",
    "find_experiment",
    "first_points",
    "gone_reason",
    "is_database",
    "log",
    "log_artifact",
    "mark_run",
    "metric_histories",
    "mirror_run",
    "open_client",
    "params_of",
    "parent_run",
    "point",
    "publish_to_run",
    "read_run_id",
    "record_run",
    "redact",
    "resolve_tracking_uri",
    "run_page_url",
    "run_records",
    "run_status",
    "run_tags",
    "runs_page_url",
    "set_run_status",
    "set_status",
    "set_tags",
    "sqlite_path",
    "start_record",
    "sweep_axes",
    "sweep_parent",
    "tag_run",
    "tags_of",
    "update_parent",
    "update_record",
    "write_run_id",
]
