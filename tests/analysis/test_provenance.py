"""The report's provenance block and run links, for a tracking server and for a database store."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from analysis.provenance import provenance_lines, run_link

RUNS = pd.DataFrame({"experiment_id": ["7", "7"], "run_id": ["abc", "def"]})
WHEN = dt.datetime(2026, 12, 2, 7, 5, tzinfo=dt.timezone.utc)


def test_server_links_open_the_run_in_the_mlflow_ui_and_hide_the_password() -> None:
    uri = "https://alice:s3cret@mlflow.example.org:5000/"
    assert run_link(uri, "7", "abc") == "[abc](https://alice:***@mlflow.example.org:5000/#/experiments/7/runs/abc)"
    text = "\n".join(provenance_lines(uri, "sweep", RUNS, WHEN))
    assert "s3cret" not in text and "alice:***@mlflow.example.org" in text
    assert "written 2026-12-02 07:05 UTC" in text and "experiment `sweep` (id 7), 2 runs" in text
    assert "https://alice:***@mlflow.example.org:5000/#/experiments/7" in text


def test_database_store_gets_run_ids_and_the_mlflow_ui_command() -> None:
    uri = "sqlite:////tmp/x/mlflow.db"
    assert run_link(uri, "7", "abc") == "`abc`"
    text = "\n".join(provenance_lines(uri, "sweep", RUNS, WHEN))
    assert "`mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db`" in text
    assert "commit `" in text  # the analysis code's commit (or 'unknown' outside a checkout)
