"""One home for MLflow I/O: no SQL writes MLflow's tables, and the one read-only query runs only on the schema it
was checked against. That only the store package (and the engine's tracker) imports mlflow or SQLAlchemy is
tests/test_layers.py's."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric
from tiny import REPO

from experiments.store import metric_histories, read
from experiments.store.client import open_client


def _sources() -> list[Path]:
    return sorted(p for package in ("experiments", "analysis") for p in (REPO / package).rglob("*.py"))


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
