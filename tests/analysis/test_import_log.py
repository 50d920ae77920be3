"""Seed-format logs, with noise, become MLflow runs; a log with nothing to import creates nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from analysis.import_log import import_log, parse_seed_log

NEW = """INFO train.py(120): iter: 100/41000, lr: 0.000011, loss: 0.8123, eta: 12:29:50, time: 110.1234
eval:  35%|███▌      | 7/20 [00:03<00:05,  2.31it/s]\reval:  40%|████      | 8/20 [00:03<00:05,  2.31it/s]
iter: 200/41000, lr: 0.000023, loss: nan, eta: 1 day, 2:03:04, time: 109.0000
/usr/lib/python3/torch/nn/functional.py:1234: UserWarning: Default upsampling behavior changed
Traceback (most recent call last):
  File "train.py", line 3, in <module>
RuntimeError: CUDA out of memory (iter: 300/41000 was not reached)
iter: 300/41000, lr: 0.000049, loss: 0.7001, eta: 3 days, 0:00:01, time: 108.5
==> warmup done, start to implement poly lr strategy
training done, model saved to: ./res/model_final.pth
evaluating the final model
mIOU is: 0.784770123
"""
OLD = "it: 50/41000, lr: 0.000255, loss: 1.2345, eta: 13:01:02, time: 25.1234\nit: 100/41000, lr: 0.000300, loss: inf, eta: 13:00:00, time: 25.0\n"


def test_parses_both_versions_amid_noise() -> None:
    log = parse_seed_log(NEW)
    assert [p[0] for p in log.points] == [100, 200, 300]
    assert log.points[0] == (100, 0.000011, 0.8123)
    assert str(log.points[1][2]) == "nan"
    assert log.total == 41000 and log.miou == pytest.approx(0.784770123)
    old = parse_seed_log(OLD)
    assert [(p[0], p[1]) for p in old.points] == [(50, 0.000255), (100, 0.0003)]
    assert old.points[1][2] == float("inf") and old.miou is None


def test_import_creates_a_run_with_curves(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "slurm-11413.out").write_text(NEW)
    run_id = import_log(tmp_path / "slurm-11413.out", uri, "seed-logs", "resnet50")
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["model.backbone"] == "resnet50" and run.data.params["train.iterations"] == "41000"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [100, 200, 300]
    assert run.data.metrics["val/mIoU_seed_metric"] == pytest.approx(0.784770123)
    assert run.data.tags["source"] == "seed-log" and run.info.status == "FINISHED"


def test_nothing_parseable_is_an_error_and_creates_no_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "noise.log").write_text("Traceback (most recent call last):\nValueError: nope\n" + "\r50%|█████|" * 3)
    with pytest.raises(AnalysisError, match="noise.log has no line in the seed's format"):
        import_log(tmp_path / "noise.log", uri, "seed-logs", "resnet101")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            "import-log",
            str(tmp_path / "noise.log"),
            "--experiment",
            "seed-logs",
            "--backbone",
            "resnet101",
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.startswith("error: import-log:") and out.stderr.count("\n") == 1
    experiment = MlflowClient(uri).get_experiment_by_name("seed-logs")
    assert experiment is None or not MlflowClient(uri).search_runs([experiment.experiment_id])
