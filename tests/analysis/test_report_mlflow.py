"""`analysis report` publishes to the sweep's parent run in a real sqlite store: verdict, Δ metrics, artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow.tracking import MlflowClient

from analysis.cells import DELTA_DEFINITION, DELTA_METRIC
from analysis.comparison import compare
from analysis.frames import runs_frame
from analysis.landing import HEADLINE_MAX, publish_to_mlflow, report_artifacts
from analysis.report import write_report
from experiments.store import artifact_link, publish_to_run, record_run, sweep_parent
from experiments.store.publish import NOTE
from experiments.store.views import EXPERIMENT_KIND, SHARED_VIEW, VIEW_KEY, VIEW_NAME

if TYPE_CHECKING:
    from conftest import SweepStore


# files of the user's in the folder the report is written into: left alone, never published
THEIRS = {"notes.txt": "mine\n", "figures/sketch.png": "not the report's\n", "evidence/draft.md": "# draft\n"}


@pytest.fixture(scope="module")
def published(sweep_store: SweepStore, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The report written (and published) once, into a folder that holds other files; the out dir and the parent
    run's id."""
    out = tmp_path_factory.mktemp("published")
    for name, text in THEIRS.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    write_report(sweep_store.experiment, sweep_store.tracking_uri, out, n_boot=100)
    found = sweep_parent(sweep_store.tracking_uri, sweep_store.experiment)
    assert found is not None, "the fixture sweep has a parent run"
    return out, found[1]


def experiment_id(sweep_store: SweepStore) -> str:
    return MlflowClient(sweep_store.tracking_uri).get_experiment_by_name(sweep_store.experiment).experiment_id


def verdict_section(out: Path) -> str:
    return (out / "report.md").read_text().split("## Verdict")[1].split("\n## ")[0]


def test_parent_run_description_is_the_verdict(published: tuple[Path, str], sweep_store: SweepStore) -> None:
    out, parent = published
    client = MlflowClient(sweep_store.tracking_uri)
    note = client.get_run(parent).data.tags[NOTE]
    lines = verdict_section(out).splitlines()
    cell_lines = [line for line in lines if line.startswith(("- at ", "- **The answer** at "))]
    assert len(cell_lines) == 2 * len(sweep_store.grid["train.iterations"])  # the looks' answer and all seeds
    for line in cell_lines:
        assert line in note.splitlines()  # every compared cell, word for word
    assert "**Synthetic data**" in note and DELTA_DEFINITION in note
    assert f"[report/report.html](#/experiments/{experiment_id(sweep_store)}/runs/{parent}/artifacts/report/" in note
    headline = client.get_experiment_by_name(sweep_store.experiment).tags[NOTE]
    assert note.startswith(f"**{headline}**") and headline.startswith("synthetic: Δ = res101 − res50: ")


def test_the_landing_page_gives_delta_its_interval_and_equivalence_on_one_line(
    published: tuple[Path, str], sweep_store: SweepStore
) -> None:
    """MLflow 3.17 folds an experiment's description to its first line: the headline must fit there."""
    headline = MlflowClient(sweep_store.tracking_uri).get_experiment_by_name(sweep_store.experiment).tags[NOTE]
    runs = runs_frame(sweep_store.tracking_uri, sweep_store.experiment)
    longest = runs[runs.iterations == max(sweep_store.grid["train.iterations"])].groupby("backbone").miou.mean()
    delta = longest["resnet101"] - longest["resnet50"]
    assert "\n" not in headline and len(headline) <= HEADLINE_MAX, headline
    assert f": {delta:+.2f} mIoU (RCI " in headline  # the sequential design's repeated CI: the study's answer
    assert headline.endswith("equivalence ±0.5 not shown; +1 cell"), headline


def test_delta_metrics_per_schedule_equal_the_report(published: tuple[Path, str], sweep_store: SweepStore) -> None:
    out, parent = published
    metrics = MlflowClient(sweep_store.tracking_uri).get_run(parent).data.metrics
    runs = runs_frame(sweep_store.tracking_uri, sweep_store.experiment)
    verdict = verdict_section(out)
    for iterations in sweep_store.grid["train.iterations"]:
        cell = runs[runs.iterations == iterations]
        means = cell.groupby("backbone").miou.mean()
        delta = means["resnet101"] - means["resnet50"]  # points, res101's lead
        key = f"{DELTA_METRIC}/iterations-{iterations}"  # the cell label, as MLflow spells a name
        assert DELTA_METRIC == "mIoU_res101_minus_res50" and metrics[key] == round(delta, 2)  # as the report prints
        assert f"at iterations={iterations}: Δ = res101 − res50 = {delta:+.2f} points" in verdict
        assert metrics[f"{key}/ci90_low"] < metrics[key] < metrics[f"{key}/ci90_high"]
        assert metrics[f"{key}/rci_low"] < metrics[key] < metrics[f"{key}/rci_high"]  # one look at 2 seeds
        assert metrics[f"sequential/iterations-{iterations}/look"] == 1
        for backbone in ("resnet50", "resnet101"):
            assert metrics[f"seeds/iterations-{iterations}/{backbone}"] == (cell.backbone == backbone).sum()
    assert not [k for k in metrics if "res50_minus" in k]


def test_report_files_are_parent_run_artifacts(published: tuple[Path, str], sweep_store: SweepStore) -> None:
    out, parent = published
    client = MlflowClient(sweep_store.tracking_uri)
    names = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= names
    figures = {Path(f.path).name for f in client.list_artifacts(parent, "report/figures")}
    own = {p.name for p in (out / "figures").iterdir() if f"figures/{p.name}" not in THEIRS}
    assert figures == own and "curves.png" in figures
    local = Path(client.download_artifacts(parent, "report/report.html", str(out / "downloaded")))
    assert local.read_bytes() == (out / "report.html").read_bytes()


def test_children_carry_short_tags_and_no_tag_is_empty(published: tuple[Path, str], sweep_store: SweepStore) -> None:
    client = MlflowClient(sweep_store.tracking_uri)
    experiment = client.get_experiment_by_name(sweep_store.experiment)
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == len(runs) - 1 == 8
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags["backbone"] == params["model.backbone"]
        assert tags["iterations"] == params["train.iterations"] and tags["seed"] == params["train.seed"]
        named = {f"{name}={tags[name]}" for name in ("backbone", "iterations", "seed")}
        assert set(run.info.run_name.split(",")) == named  # the run's name is its axis tags
    for run in runs:
        assert not [k for k, v in run.data.tags.items() if not v.strip()], run.info.run_name
    assert all(v.strip() for v in experiment.tags.values())
    assert experiment.tags[EXPERIMENT_KIND] == "custom_model_development"  # the runs view, not GenAI traces
    saved = json.loads(experiment.tags[SHARED_VIEW + VIEW_KEY])  # a saved view: listed in the UI's Views menu
    assert saved["name"] == VIEW_NAME and isinstance(saved["createdAt"], int)
    view = json.loads(saved["state"])
    assert view["selectedColumns"][:4] == ["metrics.`val/mIoU`", "tags.`backbone`", "tags.`iterations`", "tags.`seed`"]
    keys = [(k["mode"], k["groupByData"]) for k in view["groupBy"]["groupByKeys"]]
    assert keys == [("tag", "backbone"), ("tag", "iterations")] and view["groupBy"]["aggregateFunction"] == "average"


def test_a_second_publication_replaces_the_first(published: tuple[Path, str], sweep_store: SweepStore) -> None:
    """Same step 0, newer value shown; the description overwritten; artifacts overwritten, not added."""
    out, parent = published
    uri, client = sweep_store.tracking_uri, MlflowClient(sweep_store.tracking_uri)
    before = {f.path for f in client.list_artifacts(parent, "report")}
    key = f"{DELTA_METRIC}/iterations-4"
    published_before = len(client.get_metric_history(parent, key))  # other tests report too
    files = [out / Path(name).relative_to("report") for name in sorted(_artifacts(client, parent))]
    eid = experiment_id(sweep_store)
    note = f"again {artifact_link(eid, parent, 'report/report.html')}"
    publish_to_run(uri, eid, parent, experiment_note="second", run_note=note, metrics={key: 1.25},
                   artifacts=report_artifacts(out, files))  # fmt: skip
    run = client.get_run(parent)
    assert run.data.metrics[key] == 1.25
    history = client.get_metric_history(parent, key)
    assert len(history) == published_before + 1 and {m.step for m in history} == {0}
    assert (
        run.data.tags[NOTE] == f"again #/experiments/{experiment_id(sweep_store)}/runs/{parent}/artifacts/report/"
        "report.html?workflowType=machine_learning"
    )
    assert {f.path for f in client.list_artifacts(parent, "report")} == before
    write_report(sweep_store.experiment, uri, out, n_boot=100)  # put the real verdict back for the other tests


def _artifacts(client: MlflowClient, run_id: str, path: str = "report") -> set[str]:
    listed = client.list_artifacts(run_id, path)
    return {f.path for f in listed if not f.is_dir} | {
        p for f in listed if f.is_dir for p in _artifacts(client, run_id, f.path)
    }


def test_the_report_publishes_its_own_files_only(published: tuple[Path, str], sweep_store: SweepStore) -> None:
    out, parent = published
    for name, text in THEIRS.items():
        assert (out / name).read_text() == text, f"{name}: the user's file was changed"
    artifacts = _artifacts(MlflowClient(sweep_store.tracking_uri), parent)
    assert not {f"report/{name}" for name in THEIRS} & artifacts
    assert {
        "report/report.md",
        "report/report.html",
        "report/figures/cost.svg",
        "report/evidence/report.md",
    } <= artifacts
    assert {"report/evidence/figures/forest.png", "report/figures/curves.png"} <= artifacts


def test_publishing_uploads_the_files_it_is_given_and_leaves_the_folder_alone(
    tmp_path: Path, sqlite_store: str
) -> None:
    """`analysis report --out DIR` into a folder holding other files: only the report's files reach MLflow, at
    their places below report/; the others are neither uploaded, moved nor deleted."""
    from experiments.store import ensure_experiment, ensure_parent_run

    uri = sqlite_store
    eid = ensure_experiment(uri, "mine")
    run_id = ensure_parent_run(uri, eid, "mine", folder=tmp_path / "runs" / "mine")
    out = tmp_path / "out"
    own = ["report.md", "report.html", "figures/curves.png", "evidence/report.md", "evidence/figures/forest.svg"]
    theirs = ["notes.txt", "figures/old_plot.png", "evidence/draft.md", "data/big.csv"]
    for name in own + theirs:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    publish_to_run(uri, eid, run_id, experiment_note="h", run_note="d", metrics={},
                   artifacts=report_artifacts(out, [out / name for name in own]))  # fmt: skip
    assert _artifacts(MlflowClient(uri), run_id) == {f"report/{name}" for name in own}
    assert all((out / name).read_text() == name for name in own + theirs)


def test_runs_without_a_parent_are_not_published(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for backbone, miou in (("resnet50", 59.0), ("resnet101", 60.0)):  # imported logs: runs, but no sweep parent
        params = {"model.backbone": backbone, "train.iterations": "4"}
        record_run(uri, "imported", key=f"fork:{backbone}", run_name=backbone, tags={"config_hash": backbone},
                   params=params, metrics=[("val/mIoU", miou, 4)], status="FINISHED")  # fmt: skip
    publish_to_mlflow(compare("imported", uri, n_boot=10), tmp_path, [])
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "no single sweep parent run" in said[0]
    assert sweep_parent(uri, "imported") is None
