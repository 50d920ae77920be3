"""From scratch on synthetic data, a few minutes of CPU training clearly beat a constant prediction."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from tiny import TINY

from deeplab.config import load_config
from deeplab.data.loader import build_val_dataset
from deeplab.engine import train
from deeplab.metrics import ConfusionMatrix


def _constant_baseline(cfg) -> float:
    """mIoU of predicting the most frequent class everywhere, on the same validation images."""
    dataset = build_val_dataset(cfg)
    masks = [dataset.load(i)[1] for i in range(len(dataset))]
    counts = torch.bincount(torch.cat([m.flatten() for m in masks]).long(), minlength=256)[:19]
    metric = ConfusionMatrix()
    for mask in masks:
        metric.update(torch.full_like(mask, int(counts.argmax())), mask)
    return 100 * metric.compute().miou  # points, as the tracker logs mIoU


@pytest.mark.slow
def test_learns_well_above_a_constant_prediction(tmp_path: Path) -> None:
    cfg = load_config(
        TINY,
        [f"data.root={tmp_path / 'data'}", "train.iterations=120", "train.eval_every=0", "train.checkpoint_every=0"],
    )
    start = time.perf_counter()
    result = train(cfg, tmp_path / "run", progress="lines")
    baseline = _constant_baseline(cfg)
    print(
        f"val mIoU {result.metrics['val/mIoU']:.2f} vs constant {baseline:.2f} after "
        f"{time.perf_counter() - start:.0f} s"
    )
    assert result.metrics["val/mIoU"] > 3 * baseline
