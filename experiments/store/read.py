"""Reading a store back: run records, metric histories, first points, artifacts.

Everything goes through MLflow's client (``search_runs``, ``get_metric_history``; a thread pool on servers)
except one read-only query: on a database store whose schema is the one the installed MLflow expects and the
one this query was checked against, metric histories of many runs come from one SELECT on ``metrics``
(``get_metric_history`` costs ~10 ms a call on sqlite: 200 runs × 20 metrics would take a minute).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import sqlalchemy

from experiments.store.client import open_client
from experiments.store.uri import is_database, sqlite_path
from experiments.store.write import search

# MLflow schema revisions (alembic) whose `metrics` table (run_uuid, key, value, timestamp, step, is_nan) the
# query below was checked against; a test fails when the installed MLflow expects another one
CHECKED_REVISIONS = ("dc11669786a5",)
HISTORY_COLUMNS = ["run_id", "metric", "step", "value", "timestamp"]


@dataclass
class RunRecord:
    """A run as ``search_runs`` returns it, flattened: info, params, tags and the latest value of each metric."""

    run_id: str
    name: str
    status: str
    start: int | None
    end: int | None
    experiment_id: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def run_records(uri: str, experiment_id: str, filter_string: str = "") -> list[RunRecord]:
    """The experiment's active runs (matching ``filter_string``), with params, tags and latest metrics."""
    out = []
    for run in search(uri, experiment_id, filter_string):
        i, d = run.info, run.data
        out.append(RunRecord(i.run_id, i.run_name, i.status, i.start_time, i.end_time, i.experiment_id,
                             dict(d.params), dict(d.tags), dict(d.metrics)))  # fmt: skip
    return out


@functools.lru_cache(maxsize=16)
def _sql_engine(uri: str) -> sqlalchemy.Engine | None:
    """An engine for the read-only query, or None when the schema is not one it was checked against."""
    if not is_database(uri):
        return None
    open_client(uri)  # MLflow verifies the schema when it opens a store (and refuses an outdated one)
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        expected = _get_latest_schema_revision()
    except Exception:  # MLflow moved its internals: the client's API is the safe path
        return None
    engine = sqlalchemy.create_engine(uri)
    with engine.connect() as conn:
        found = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    if found == expected and found in CHECKED_REVISIONS:
        return engine
    print(f"store: schema revision {found} (MLflow expects {expected}): reading through the API", file=sys.stderr)
    engine.dispose()
    return None


def _sql_histories(engine: sqlalchemy.Engine, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    query = sqlalchemy.text(
        "SELECT run_uuid AS run_id, key AS metric, step, value, timestamp, is_nan FROM metrics "
        "WHERE run_uuid IN :runs AND key IN :keys"
    ).bindparams(sqlalchemy.bindparam("runs", expanding=True), sqlalchemy.bindparam("keys", expanding=True))
    frames = []
    with engine.connect() as conn:
        for i in range(0, len(run_ids), 500):  # bound the IN list (sqlite takes ≤ 32766 variables)
            frames.append(pd.read_sql(query, conn, params={"runs": run_ids[i : i + 500], "keys": keys}))
    frame = pd.concat(frames, ignore_index=True)
    frame.loc[frame.pop("is_nan").astype(bool), "value"] = float("nan")  # MLflow stores a NaN as 0 + flag
    return frame


def _api_histories(uri: str, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    client = open_client(uri)
    pairs = [(r, k) for r in run_ids for k in keys]

    def history(pair: tuple[str, str]) -> list[tuple]:
        return [(pair[0], pair[1], m.step, m.value, m.timestamp) for m in client.get_metric_history(*pair)]

    if sqlite_path(uri) is not None:  # sqlite serves one reader at a time well; threads only add contention
        rows = [row for pair in pairs for row in history(pair)]
    else:
        with ThreadPoolExecutor(max_workers=8) as pool:
            rows = [row for part in pool.map(history, pairs) for row in part]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def metric_histories(uri: str, run_ids: Sequence[str], keys: Sequence[str], *, sql: bool = True) -> pd.DataFrame:
    """Every logged point of ``keys`` for ``run_ids``: (run_id, metric, step, value, timestamp), NaN kept as NaN.
    ``sql=False`` reads through the API even where the read-only query would do (benchmarks compare both)."""
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    open_client(uri)  # a sqlite store that went away or was replaced is an error, not an empty frame
    if not run_ids or not keys:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    engine = _sql_engine(uri) if sql else None
    frame = _sql_histories(engine, run_ids, keys) if engine is not None else _api_histories(uri, run_ids, keys)
    return frame[HISTORY_COLUMNS]


def first_points(uri: str, run_ids: Sequence[str], key: str, *, sql: bool = True) -> dict[str, int]:
    """Timestamp (ms) of each run's first point of ``key``, for the runs that have one."""
    points = metric_histories(uri, run_ids, [key], sql=sql)
    return {rid: int(ts) for rid, ts in points.groupby("run_id").timestamp.min().items()}


def download_artifact(uri: str, run_id: str, path: str, dest: Path) -> Path:
    """One artifact of a run, downloaded into ``dest``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in reports and notebooks
    return Path(open_client(uri).download_artifacts(run_id, path, str(dest)))
