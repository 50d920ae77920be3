"""Child runs created in bulk (one transaction on a database store, a thread pool on a server) are the same
runs MLflow's one-by-one calls make: SCHEDULED, tagged, with every param; a resubmission finds them."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.errors import ExperimentsError
from experiments.server import running_server
from experiments.store import (
    NewChild,
    StoreGone,
    child_runs,
    ensure_child_runs,
    ensure_experiment,
    ensure_parent_run,
    find_experiment,
    log_artifact,
    metric_histories,
    record_run,
    set_run_status,
    sweep_axes,
    update_parent,
)

PARAMS = {f"section.key{i}": i for i in range(120)} | {"data.root": "/x" * 10, "model.backbone": "resnet50"}


def _cells(n: int, folder: Path) -> list[NewChild]:
    return [
        NewChild(f"h{i:03d}", f"run{i}", PARAMS | {"train.seed": i}, {"sweep.name": "s"}, folder / f"h{i:03d}")
        for i in range(n)
    ]


def _view(uri: str, run_id: str) -> tuple:
    run = MlflowClient(uri).get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("sweep.", "config_hash", "mlflow.parentRunId"))}
    return run.info.status, run.info.run_name, run.data.params, sorted(tags)


def _check_same_as_one_by_one(uri: str, folder: Path) -> None:
    eid = ensure_experiment(uri, "bulk")
    parent = ensure_parent_run(uri, eid, "bulk", {}, {}, folder=folder / "bulk")
    cells = _cells(6, folder / "bulk")
    first = ensure_child_runs(uri, eid, parent, cells[:2])  # a partial sweep, then the whole grid
    made = ensure_child_runs(uri, eid, parent, cells)
    assert {h: c.run_id for h, c in first.items()} == {h: made[h].run_id for h in first}
    assert sorted(made) == [c.config_hash for c in cells] == sorted(child_runs(uri, eid, parent))
    assert ensure_child_runs(uri, eid, parent, cells).keys() == made.keys()  # nothing created twice
    assert len(MlflowClient(uri).search_runs([eid], "tags.`sweep.name` = 's'")) == len(cells)

    other = ensure_experiment(uri, "one_by_one")
    other_parent = ensure_parent_run(uri, other, "one_by_one", {}, {}, folder=folder / "one")
    for cell in _cells(6, folder / "one"):
        single = ensure_child_runs(uri, other, other_parent, [cell])[cell.config_hash]
        bulk = made[cell.config_hash]
        assert bulk.status == single.status == "SCHEDULED"
        status, name, params, tags = _view(uri, bulk.run_id)
        assert (status, name, params, tags) == _view(uri, single.run_id)
        assert params["train.seed"] == str(cell.params["train.seed"]) and len(params) == len(cell.params)


def test_bulk_children_on_sqlite_match_one_by_one(tmp_path: Path) -> None:
    _check_same_as_one_by_one(f"sqlite:///{tmp_path / 'm.db'}", tmp_path)


@pytest.mark.slow
def test_bulk_children_on_a_tracking_server_match_one_by_one(tmp_path: Path) -> None:
    with running_server(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "artifacts") as uri:
        _check_same_as_one_by_one(uri, tmp_path)


def test_last_child_to_end_closes_the_parent_and_a_resubmission_reopens_it(tmp_path: Path) -> None:
    uri, folder = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "runs"
    eid = ensure_experiment(uri, "parent")
    parent = ensure_parent_run(uri, eid, "parent", {}, {}, folder=folder)
    client = MlflowClient(uri)
    cells = _cells(3, folder)
    ensure_child_runs(uri, eid, parent, cells)
    for cell in cells[:2]:
        set_run_status(uri, cell.run_dir, "FINISHED")
        assert update_parent(uri, folder) == "RUNNING"
    assert client.get_run(parent).info.status == "RUNNING"
    set_run_status(uri, cells[2].run_dir, "FAILED", "training diverged")
    assert update_parent(uri, folder) == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    set_run_status(uri, cells[2].run_dir, "SCHEDULED")  # resubmitted
    assert update_parent(uri, folder) == "RUNNING"
    assert client.get_run(parent).info.status == "RUNNING"
    set_run_status(uri, cells[2].run_dir, "FINISHED")
    assert update_parent(uri, folder) == "FINISHED"
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


@pytest.fixture(scope="module")
def shared_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the tests that each use their own experiment (a fresh store costs MLflow's migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'm.db'}"


def test_record_run_is_idempotent_by_key(shared_uri: str) -> None:
    uri = shared_uri
    points = [("train/loss", 1.0 / s, s) for s in range(1, 6)] + [("val/mIoU", float("nan"), 5)]
    kwargs = {"key": "seedlog-abc", "run_name": "seed log", "tags": {"source": "seed-log", "empty": ""}}
    first, created = record_run(uri, "imports", **kwargs, params={"model.backbone": "resnet50"}, metrics=points)
    again = record_run(uri, "imports", **kwargs, params={"model.backbone": "resnet50", "x": 1}, metrics=points[2:])
    assert created and again == (first, False)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("imports").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"model.backbone": "resnet50", "x": "1"}
    assert run.data.tags["source"] == "seed-log" and "empty" not in run.data.tags  # no empty tags
    assert sorted(m.step for m in client.get_metric_history(first, "train/loss")) == [1, 2, 3, 4, 5]
    with pytest.raises(ExperimentsError, match="param model.backbone is already 'resnet50'"):
        record_run(uri, "imports", **kwargs, params={"model.backbone": "resnet101"})
    other = record_run(uri, "imports", key="seedlog-def", run_name="other", status="RUNNING").run_id
    assert other != first and client.get_run(other).info.status == "RUNNING"


def test_the_parent_run_keeps_every_grid_axis(shared_uri: str, tmp_path: Path) -> None:
    uri = shared_uri
    eid = ensure_experiment(uri, "axes")
    grid = {"model.backbone": ["resnet50", "resnet101"], "train.seed": [0, 1], "data.crop_size": [[32, 64]]}
    parent = ensure_parent_run(uri, eid, "axes", tags={"git.dirty": ""}, folder=tmp_path / "runs", grid=grid)
    again = ensure_parent_run(
        uri, eid, "axes", folder=tmp_path / "runs", grid={"train.seed": [2, 1], "train.iterations": [6]}
    )
    assert again == parent
    assert sweep_axes(uri, "axes") == {
        "model.backbone": ["resnet50", "resnet101"],
        "train.seed": [0, 1, 2],  # seeds added by a later sweep join the earlier ones
        "data.crop_size": [[32, 64]],
        "train.iterations": [6],
    }
    assert "git.dirty" not in MlflowClient(uri).get_run(parent).data.tags
    (tmp_path / "report.html").write_text("<p>verdict</p>")
    log_artifact(uri, parent, tmp_path / "report.html")  # what the analysis attaches to the parent run
    assert [f.path for f in MlflowClient(uri).list_artifacts(parent)] == ["report.html"]


def _create(uri: str, out: str) -> None:
    try:
        Path(out).write_text(ensure_experiment(uri, "race"))
    except BaseException as err:
        Path(out).write_text(f"error: {err.__class__.__name__}: {err}")
        raise


def test_several_processes_creating_one_fresh_store_at_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    (tmp_path / "fresh").mkdir()
    context = multiprocessing.get_context("fork")  # forked: all six reach MLflow's migrations together
    procs = [context.Process(target=_create, args=(uri, str(tmp_path / f"out{i}"))) for i in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    outs = [(tmp_path / f"out{i}").read_text() for i in range(6)]
    assert [proc.exitcode for proc in procs] == [0] * 6, outs
    assert len(set(outs)) == 1 and not outs[0].startswith("error")  # one experiment, the same id everywhere
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["race", "Default"]


def test_readers_never_create_a_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'missing.db'}"
    with pytest.raises(StoreGone, match="does not exist"):
        find_experiment(uri, "x")
    with pytest.raises(StoreGone):
        metric_histories(uri, ["r"], ["k"])
    assert list(tmp_path.iterdir()) == []
