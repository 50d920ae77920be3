"""ConfusionMatrix: one bincount equals a direct count; NaN rule; seed variant; additivity."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplab.metrics import ConfusionMatrix, confusion, iou_from_confusion, mean_iou

N = 19


def _direct_iou(pred: np.ndarray, gt: np.ndarray, seed_metric: bool) -> np.ndarray:
    """The definition, class by class, with 255 as void in both maps."""
    out = np.full(N, np.nan)
    for c in range(N):
        tp = np.sum((gt == c) & (pred == c))
        fn = np.sum((gt == c) & (pred != c))
        fp_region = np.ones_like(gt, bool) if seed_metric else gt != 255
        fp = np.sum(fp_region & (gt != c) & (pred == c))
        if tp + fp + fn:
            out[c] = tp / (tp + fp + fn)
    return out


labels = st.sampled_from([*range(N), 255])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 400).flatmap(
        lambda n: st.tuples(st.lists(labels, min_size=n, max_size=n), st.lists(labels, min_size=n, max_size=n))
    )
)
def test_matches_direct_definition(pair: tuple[list[int], list[int]]) -> None:
    pred, gt = (np.array(x, dtype=np.int64) for x in pair)
    mat = confusion(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    for seed_metric in (False, True):
        np.testing.assert_array_equal(iou_from_confusion(mat, seed_metric), _direct_iou(pred, gt, seed_metric))


def test_nan_rule_and_mean_over_defined_classes() -> None:
    gt = torch.tensor([0, 0, 1, 255])
    pred = torch.tensor([0, 1, 1, 2])
    iou = iou_from_confusion(confusion(pred, gt).numpy())
    assert iou[0] == 0.5 and iou[1] == 0.5  # class 1: TP 1, FP 1 (pixel of GT 0)
    assert np.isnan(iou[2])  # predicted only on void GT: no FP officially, absent from GT → NaN
    assert np.isnan(iou[3:]).all()
    assert mean_iou(iou) == 0.5
    seed = iou_from_confusion(confusion(pred, gt).numpy(), seed_metric=True)
    assert seed[2] == 0.0  # the seed's evaluator counts the void pixel into the union


def test_accumulation_is_additive_and_reduces_per_image() -> None:
    rng = torch.Generator().manual_seed(0)
    metric = ConfusionMatrix()
    per_image = []
    for _ in range(4):
        gt = torch.randint(0, 21, (16, 16), generator=rng)
        gt[gt >= N] = 255
        pred = torch.randint(0, N, (16, 16), generator=rng)
        per_image.append(metric.update(pred, gt))
    assert torch.equal(torch.stack(per_image).sum(0), metric.mat)
    assert metric.mat.sum() == 4 * 256
    result = metric.compute()
    assert result.miou_seed <= result.miou
    stacked = iou_from_confusion(torch.stack(per_image).numpy())
    assert stacked.shape == (4, N)
    metric.reset()
    assert metric.mat.sum() == 0
