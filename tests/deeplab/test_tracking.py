"""The default JSONL tracker: buffered until flush, every step exactly once across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeplab.errors import DeeplabError
from deeplab.tracking import JsonlTracker, iou_metric_name


def _points(run_dir: Path) -> list[tuple[str, int]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(p["key"], p["step"]) for p in map(json.loads, lines)]


def test_points_are_buffered_until_flush(tmp_path: Path) -> None:
    tracker = JsonlTracker(tmp_path)
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert not (tmp_path / "metrics.jsonl").exists()
    tracker.flush()
    assert _points(tmp_path) == [("train/loss", 1)]


def test_resume_skips_steps_already_written(tmp_path: Path) -> None:
    first = JsonlTracker(tmp_path)
    for step in range(1, 6):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.flush()  # a checkpoint at step 3 would have been written after this flush in the engine
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"key": "train/loss", "val')  # torn line from a kill mid-write
    resumed = JsonlTracker(tmp_path)
    for step in range(3, 9):  # replayed iterations 3..5, then new ones
        resumed.log_metrics({"train/loss": float(step)}, step=step)
    resumed.close("FINISHED")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if line.startswith('{"key": "train/loss", "value"')]
    assert steps == list(range(1, 9))
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "FINISHED"


def test_params_tags_and_artifacts(tmp_path: Path) -> None:
    tracker = JsonlTracker(tmp_path / "run")
    tracker.log_params({"a": 1})
    tracker.log_params({"b": "x"})
    tracker.set_tags({"config_hash": "abc"})
    src = tmp_path / "table.csv"
    src.write_text("class,iou\n")
    tracker.log_artifact(src, "val/iter_000010")
    assert json.loads((tmp_path / "run" / "params.json").read_text()) == {"a": 1, "b": "x"}
    assert (tmp_path / "run" / "artifacts" / "val" / "iter_000010" / "table.csv").read_text() == "class,iou\n"


def test_iou_metric_names_have_no_spaces() -> None:
    assert iou_metric_name("traffic light") == "val/IoU/traffic_light"


def test_files_in_the_run_dir_that_are_not_ours_are_named(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"key": "train/loss", "step": 1, "value": 0.5}\n[not a point]\n')
    tracker = JsonlTracker(tmp_path)  # reads nothing yet: the run dir may still be another process's
    with pytest.raises(DeeplabError, match=r"metrics.jsonl line 2: not a metric point"):
        tracker.log_metrics({"train/loss": 0.4}, 2)
    (tmp_path / "metrics.jsonl").unlink()
    (tmp_path / "tags.json").write_text("{truncated")
    with pytest.raises(DeeplabError, match=r"tags.json: not JSON written by this project"):
        JsonlTracker(tmp_path).set_tags({"status": "RUNNING"})
