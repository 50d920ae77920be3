"""Exact resume: a run stopped at any iteration and resumed ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import REPO, TINY, tiny_config, tiny_overrides

from deeplab.checkpoint import load_checkpoint
from deeplab.config import config_hash
from deeplab.engine import StopFlag, TrainingDiverged, train
from deeplab.errors import DeeplabError
from deeplab.model import build_model
from deeplab.tracking import (
    COST_ATTEMPTS,
    COST_DEVICE_HOURS,
    COST_WALL_HOURS,
    DATA_TIME,
    ITER_TIME,
    PEAK_MEMORY,
    PREDICTION_KEY,
    STEP_TIME,
    JsonlTracker,
)
from deeplab.usage import USAGE_NAME


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def _assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _steps(run_dir: Path, key: str) -> list[int]:
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [p["step"] for p in points if p["key"] == key]


def _values(run_dir: Path, key: str) -> list[float]:
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [p["value"] for p in points if p["key"] == key]


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    tracker = JsonlTracker(run_dir)
    result = train(tiny_config(tiny_data), run_dir, tracker, progress="lines")
    tracker.close("FINISHED")
    assert result.status == "finished" and result.iteration == 6
    return run_dir


# 1: before the first checkpoint; 2: right at one; 3: right after an eval; 5: just before the end
@pytest.mark.parametrize("stop_at", [1, 2, 3, 5])
def test_stop_flag_then_resume_is_bit_identical(tiny_data: Path, reference: Path, tmp_path: Path, stop_at: int) -> None:
    cfg = tiny_config(tiny_data)
    flag = StopFlag()
    tick = time.monotonic()
    first = train(
        cfg,
        tmp_path,
        JsonlTracker(tmp_path),
        stop=flag,
        on_iteration=lambda it: flag.request() if it == stop_at else None,
    )
    first_s, tick = time.monotonic() - tick, time.monotonic()
    assert first.status == "interrupted" and first.iteration == stop_at
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == stop_at
    first_usage = json.loads((tmp_path / USAGE_NAME).read_text())
    tracker = JsonlTracker(tmp_path)
    second = train(cfg, tmp_path, tracker)
    tracker.close("FINISHED")
    second_s = time.monotonic() - tick
    # the cost sums both attempts: the first's time (within its call), then the second's on top of it
    assert first_usage["attempts"] == 1 and 0 < first_usage["wall_s"] <= first_s
    wall_s = 3600 * _values(tmp_path, COST_WALL_HOURS)[-1]
    assert first_usage["wall_s"] < wall_s <= first_s + second_s
    assert _values(tmp_path, COST_ATTEMPTS)[-1] == 2
    assert _values(tmp_path, COST_DEVICE_HOURS)[-1] == pytest.approx(wall_s / 3600)  # one rank
    assert _values(tmp_path, COST_WALL_HOURS) == sorted(_values(tmp_path, COST_WALL_HOURS))
    assert _steps(tmp_path, COST_WALL_HOURS)[-1] == 6
    assert second.status == "finished"
    _assert_bit_identical(_weights(reference), _weights(tmp_path))
    assert second.metrics == pytest.approx(json.loads(json.dumps(second.metrics)))
    assert _steps(tmp_path, "train/loss") == list(range(1, 7))  # every step exactly once
    assert _steps(tmp_path, "val/mIoU") == [3, 6]
    assert _steps(tmp_path, "val/mIoU") == _steps(reference, "val/mIoU")


def test_resume_after_crash_replays_from_last_checkpoint(tiny_data: Path, reference: Path, tmp_path: Path) -> None:
    """A kill without a stop request (simulated by an exception at iteration 5) loses iterations 5.. only."""
    cfg = tiny_config(tiny_data)

    def crash(it: int) -> None:
        if it == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, JsonlTracker(tmp_path), on_iteration=crash)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 4
    train(cfg, tmp_path, JsonlTracker(tmp_path))
    _assert_bit_identical(_weights(reference), _weights(tmp_path))
    assert _steps(tmp_path, "train/loss") == list(range(1, 7))


# SIGINT and SIGHUP go to the whole process group, as a Ctrl-C or a closed terminal (an ssh drop) sends them (data
# loader workers included); a reader that goes away (`| head`) closes the pipe the progress lines go to
@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGTERM, 0), (signal.SIGINT, 2), (signal.SIGHUP, 2), (None, 0)],
    ids=["SIGTERM", "Ctrl-C", "hang-up", "closed stdout"],
)
def test_a_signal_to_the_cli_checkpoints_and_resumes_exactly(
    tiny_data: Path, reference: Path, tmp_path: Path, signum: int | None, workers: int
) -> None:
    cmd = [sys.executable, "-m", "deeplab", "train", str(TINY), "--run-dir", str(tmp_path), "--progress", "lines"]
    cmd += [arg for o in tiny_overrides(tiny_data, **{"data.num_workers": workers}) for arg in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    for line in proc.stdout:  # wait for the first logged iteration, then signal mid-run
        if line.startswith("iter 1/"):
            if signum is None:
                proc.stdout.close()
            elif signum in (signal.SIGINT, signal.SIGHUP):
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            break
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 3, err
    stopped_at = load_checkpoint(tmp_path / "checkpoint.pt")["iteration"]
    assert 1 <= stopped_at < 6
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "KILLED"
    if signum != signal.SIGTERM:  # what follows a checkpointed stop does not depend on the signal: checked once
        assert "Traceback" not in err and "optimizer" in load_checkpoint(tmp_path / "checkpoint.pt")
        return
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "val mIoU" in again.stdout
    _assert_bit_identical(_weights(reference), _weights(tmp_path))
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "FINISHED"
    assert _steps(tmp_path, "train/loss") == list(range(1, 7))


def test_a_run_records_where_its_time_goes_its_data_and_its_predictions(reference: Path) -> None:
    assert (
        _steps(reference, DATA_TIME) == _steps(reference, STEP_TIME) == _steps(reference, PEAK_MEMORY) == [*range(1, 7)]
    )
    for data, step, whole in zip(*(_values(reference, k) for k in (DATA_TIME, STEP_TIME, ITER_TIME)), strict=True):
        assert data >= 0 and step > 0 and data + step == pytest.approx(whole)
    assert all(0 < gb < 64 for gb in _values(reference, PEAK_MEMORY))  # CPU: the process's peak RSS
    inputs = json.loads((reference / "inputs.json").read_text())
    assert {name: (d["context"], d["profile"]["images"]) for name, d in inputs.items()} == {
        "cityscapes/train": ("training", 8),  # tiny_data: generated, but the config names no synthetic data
        "cityscapes/val": ("validation", 2),
    }
    # the two validation images at both validations (rank 0's shard is the whole split)
    panels = sorted(p.relative_to(reference / "images") for p in (reference / "images").rglob("*.png"))
    assert len(panels) == 4 and {p.name for p in panels} == {"000003.png", "000006.png"}
    assert all(str(p).startswith(PREDICTION_KEY) for p in panels)
    assert (reference / "artifacts" / "predictions" / "legend.png").is_file()


def test_finished_run_is_not_trained_again(reference: Path, tiny_data: Path) -> None:
    before = (reference / "checkpoint.pt").stat().st_mtime_ns
    result = train(tiny_config(tiny_data), reference)
    assert result.status == "finished" and result.metrics["val/mIoU"] >= 0
    assert (reference / "checkpoint.pt").stat().st_mtime_ns == before  # nothing trained or rewritten


def test_resume_with_another_config_names_both_hashes(reference: Path, tiny_data: Path) -> None:
    with pytest.raises(DeeplabError, match=r"checkpoint is of config \w+, this run is \w+ \(differs in train.seed"):
        train(tiny_config(tiny_data, **{"train.seed": 7}), reference)


def test_nan_loss_stops_naming_the_iteration(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, **{"optim.lr": 1e12, "schedule.warmup": "none", "train.eval_every": 0})
    tracker = JsonlTracker(tmp_path)
    with pytest.raises(TrainingDiverged, match=r"training diverged at iteration \d+: loss is (nan|inf)"):
        train(cfg, tmp_path, tracker)
    assert not (tmp_path / "status.json").exists()


def test_a_finished_runs_checkpoint_holds_the_weights_without_the_optimizer(reference: Path) -> None:
    state = load_checkpoint(reference / "checkpoint.pt")
    assert state["final_metrics"]["val/mIoU"] >= 0 and state["iteration"] == 6
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(state)  # a finished run never resumes
    weights = sum(t.nbytes for t in state["model"].values())
    assert weights > 100e6 and (reference / "checkpoint.pt").stat().st_size < 1.01 * weights


def test_keep_weights_false_leaves_a_small_finished_marker(tiny_data: Path, tmp_path: Path) -> None:
    extra = {"train.iterations": 2, "schedule.warmup_iters": 1, "train.eval_every": 0}
    lean = tiny_config(tiny_data, **extra, **{"train.keep_weights": False})
    assert config_hash(lean) == config_hash(tiny_config(tiny_data, **extra))  # the same run, kept differently
    first = train(lean, tmp_path)
    path = tmp_path / "checkpoint.pt"
    assert first.status == "finished" and path.stat().st_size < 100_000
    assert load_checkpoint(path)["model"] == {}
    before = path.stat().st_mtime_ns
    again = train(lean, tmp_path)  # a resubmission knows the run finished
    assert again.status == "finished" and again.metrics == first.metrics
    assert path.stat().st_mtime_ns == before
    with pytest.raises(DeeplabError, match=r"model.weights: .*checkpoint.pt: this finished run kept no weights"):
        build_model(tiny_config(tiny_data, **{"model.weights": str(path)}).model)  # as backbone/init weights
    out = subprocess.run(
        [sys.executable, "-m", "deeplab", "evaluate", "--checkpoint", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: {path}: this finished run kept no weights (it was trained with train.keep_weights=false)"
    )
