"""One home for MLflow I/O: nothing in experiments/ or analysis/ imports mlflow or SQLAlchemy outside the store
package (and the engine's tracker), no SQL writes MLflow's tables, and the one read-only query runs only on the
schema it was checked against."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric
from tiny import REPO

from experiments.store import metric_histories, read
from experiments.store.client import open_client

HOME = {"experiments/store"}
MLFLOW_ALLOWED = {"experiments/mlflow_tracker.py"}  # the tracker the engine talks to


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports, at any depth of the file (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _sources() -> list[Path]:
    return sorted(p for package in ("experiments", "analysis") for p in (REPO / package).rglob("*.py"))


def _home(rel: str) -> bool:
    return any(rel.startswith(h + "/") for h in HOME)


def test_only_the_store_package_imports_mlflow_or_sqlalchemy() -> None:
    offenders = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        found = _imports(path) & {"mlflow", "sqlalchemy"}
        if _home(rel) or (rel in MLFLOW_ALLOWED and found <= {"mlflow"}):
            continue
        offenders += [f"{rel} imports {name}" for name in sorted(found)]
    assert not offenders, offenders
    assert _imports(REPO / "experiments" / "store" / "client.py") >= {"mlflow"}  # the scan does see imports


def test_no_sql_writes_mlflow_tables() -> None:
    writes = re.compile(r"INSERT INTO|UPDATE runs|DELETE FROM|UPDATE \w+ SET|DROP TABLE|ALTER TABLE")
    hits = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in _sources()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if writes.search(line)
    ]
    assert hits == []


def test_the_read_only_query_was_checked_against_the_installed_mlflow_schema(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = open_client(uri, create=True)
    revision = sqlite3.connect(tmp_path / "m.db").execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert revision in read.CHECKED_REVISIONS, (
        f"MLflow now creates schema {revision}: check read._sql_histories against its `metrics` table, then add it"
    )
    run = client.create_run(client.create_experiment("e")).info.run_id
    client.log_batch(run, metrics=[Metric("m", v, 1000 + s, s) for s, v in enumerate([0.5, float("nan"), 0.25])])
    read._sql_engine.cache_clear()
    fast = metric_histories(uri, [run], ["m"]).sort_values("step").reset_index(drop=True)
    slow = metric_histories(uri, [run], ["m"], sql=False).sort_values("step").reset_index(drop=True)
    assert read._sql_engine(uri) is not None  # the query path was the one taken
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    assert list(fast.step) == [0, 1, 2] and fast.value.isna().tolist() == [False, True, False]


def test_another_schema_revision_reads_through_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    open_client(uri, create=True)
    monkeypatch.setattr(read, "CHECKED_REVISIONS", ("not-this-one",))
    read._sql_engine.cache_clear()
    try:
        assert read._sql_engine(uri) is None
    finally:
        read._sql_engine.cache_clear()
