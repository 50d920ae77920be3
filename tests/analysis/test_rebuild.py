"""The MLflow store is a cache of the run directories: lost, it is made again from them, and says the same."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import SweepStore
from mlflow.tracking import MlflowClient
from tiny import REPO

from analysis.report import write_report

RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def _said(report: Path, uri: str) -> str:
    """The report's words without what names a store: its URI, run and experiment ids, the date."""
    text = report.read_text().replace(uri, "URI")
    text = RUN_ID.sub("RUN", text)
    text = re.sub(r"experiment id \d+|/experiments/\d+", "EXPERIMENT", text)
    return re.sub(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?( UTC)?", "DATE", text)


def test_a_store_deleted_after_a_sweep_is_rebuilt_from_the_run_directories_and_reports_the_same(
    sweep_store: SweepStore, tmp_path: Path
) -> None:
    before = write_report(sweep_store.experiment, sweep_store.tracking_uri, tmp_path / "before", n_boot=100)
    # the sweep's run directories alone, copied (the session's store stays for the other tests), the store gone
    spec = yaml.safe_load(sweep_store.spec.read_text())
    root = Path(spec["runs_root"])
    shutil.copytree(root, tmp_path / "runs", ignore=shutil.ignore_patterns(".submitit", "*.lock"))
    spec["runs_root"], uri = str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'rebuilt.db'}"
    spec["tracking"] = {"uri": uri}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    refused = subprocess.run(
        [sys.executable, "-m", "experiments", "sync", str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "does not exist" in refused.stderr  # never created by a plain sync
    done = subprocess.run(
        [sys.executable, "-m", "experiments", "sync", str(path), "--rebuild"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 1 + len(sweep_store.run_dirs)  # the parent, then every run
    after = write_report(sweep_store.experiment, uri, tmp_path / "after", n_boot=100)
    assert _said(after, uri) == _said(before, sweep_store.tracking_uri)

    old, new = MlflowClient(sweep_store.tracking_uri), MlflowClient(uri)
    runs = {}
    for client in (old, new):
        eid = client.get_experiment_by_name(sweep_store.experiment).experiment_id
        found = client.search_runs([eid], "tags.config_hash LIKE '%'")
        runs[client] = {r.data.tags["config_hash"]: r for r in found}
    assert runs[old].keys() == runs[new].keys() and len(runs[new]) == len(sweep_store.run_dirs)
    for digest, was in runs[old].items():
        now = runs[new][digest]
        assert (now.info.status, now.info.run_name, now.data.params) == (was.info.status, was.info.run_name,
                                                                          was.data.params)  # fmt: skip
        for key in ("train/loss", "val/mIoU", "cost/device_hours"):
            assert [(m.step, m.value) for m in new.get_metric_history(now.info.run_id, key)] == [
                (m.step, m.value) for m in old.get_metric_history(was.info.run_id, key)
            ]
        assert {a.path for a in new.list_artifacts(now.info.run_id)} >= {"config.yaml", "val", "predictions"}
    again = subprocess.run(
        [sys.executable, "-m", "experiments", "sync", str(path), "--rebuild"], cwd=REPO, capture_output=True, text=True
    )
    assert again.returncode == 0 and "every run directory is mirrored already" in again.stdout  # idempotent
