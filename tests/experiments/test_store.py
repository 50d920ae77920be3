"""Child runs created in bulk (one transaction on a database store, a thread pool on a server) are the same
runs MLflow's one-by-one calls make: SCHEDULED, tagged, with every param; a resubmission finds them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.server import running_server
from experiments.store import (
    NewChild,
    child_runs,
    close_parent_if_done,
    ensure_child_run,
    ensure_child_runs,
    ensure_experiment,
    ensure_parent_run,
    mark_run,
    reopen_parent,
)

PARAMS = {f"section.key{i}": i for i in range(120)} | {"data.root": "/x" * 10, "model.backbone": "resnet50"}


def _cells(n: int) -> list[NewChild]:
    return [NewChild(f"h{i:03d}", f"run{i}", PARAMS | {"train.seed": i}, {"sweep.name": "s"}) for i in range(n)]


def _view(uri: str, run_id: str) -> tuple:
    run = MlflowClient(uri).get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("sweep.", "config_hash", "mlflow.parentRunId"))}
    return run.info.status, run.info.run_name, run.data.params, sorted(tags)


def _check_same_as_one_by_one(uri: str) -> None:
    eid = ensure_experiment(uri, "bulk")
    parent = ensure_parent_run(uri, eid, "bulk", {}, {})
    cells = _cells(6)
    first = ensure_child_runs(uri, eid, parent, cells[:2])  # a partial sweep, then the whole grid
    made = ensure_child_runs(uri, eid, parent, cells)
    assert {h: c.run_id for h, c in first.items()} == {h: made[h].run_id for h in first}
    assert sorted(made) == [c.config_hash for c in cells] == sorted(child_runs(uri, eid, parent))
    assert ensure_child_runs(uri, eid, parent, cells).keys() == made.keys()  # nothing created twice
    assert len(MlflowClient(uri).search_runs([eid], "tags.`sweep.name` = 's'")) == len(cells)

    other = ensure_experiment(uri, "one_by_one")
    other_parent = ensure_parent_run(uri, other, "one_by_one", {}, {})
    for cell in cells:
        single = ensure_child_run(uri, other, other_parent, cell.config_hash, cell.run_name, cell.params, cell.tags)
        bulk = made[cell.config_hash]
        assert bulk.status == single.status == "SCHEDULED"
        status, name, params, tags = _view(uri, bulk.run_id)
        assert (status, name, params, tags) == _view(uri, single.run_id)
        assert params["train.seed"] == str(cell.params["train.seed"]) and len(params) == len(cell.params)


def test_bulk_children_on_sqlite_match_one_by_one(tmp_path: Path) -> None:
    _check_same_as_one_by_one(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.slow
def test_bulk_children_on_a_tracking_server_match_one_by_one(tmp_path: Path) -> None:
    with running_server(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "artifacts") as uri:
        _check_same_as_one_by_one(uri)


def test_last_child_to_end_closes_the_parent_and_a_resubmission_reopens_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    eid = ensure_experiment(uri, "parent")
    parent = ensure_parent_run(uri, eid, "parent", {}, {})
    client = MlflowClient(uri)
    children = [c.run_id for c in ensure_child_runs(uri, eid, parent, _cells(3)).values()]
    for run_id in children[:2]:
        mark_run(uri, run_id, "FINISHED")
        assert close_parent_if_done(uri, run_id) is None
    assert client.get_run(parent).info.status == "RUNNING"
    mark_run(uri, children[2], "FAILED", "training diverged")
    assert close_parent_if_done(uri, children[2]) == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    reopen_parent(uri, parent)
    assert client.get_run(parent).info.status == "RUNNING"
    for run_id in children:
        mark_run(uri, run_id, "FINISHED")
    assert close_parent_if_done(uri, children[0]) == "FINISHED"
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_sqlite_experiment_keeps_its_artifacts_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's own default would be ./mlruns of this directory
    (tmp_path / "db").mkdir()
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = ensure_experiment(uri, "beside")
    assert client.get_experiment(eid).artifact_location == (tmp_path / "db" / "mlartifacts").as_uri()
    run = client.create_run(eid)
    (tmp_path / "table.csv").write_text("class,iou\nroad,0.9\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "table.csv"))
    assert list((tmp_path / "db" / "mlartifacts").rglob("table.csv"))
    assert list(elsewhere.iterdir()) == []
    chosen = (tmp_path / "chosen").as_uri()
    assert client.get_experiment(ensure_experiment(uri, "chosen", artifact_location=chosen)).artifact_location == chosen
