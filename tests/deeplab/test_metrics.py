"""ConfusionMatrix: one bincount equals a direct count (every input dtype, any length); NaN rule; seed variant;
additivity."""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplab import metrics as metrics_module
from deeplab.metrics import ConfusionMatrix, confusion, count_pairs, iou_from_confusion, mean_iou

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


def test_count_pairs_equals_direct_count_for_every_dtype_and_length() -> None:
    """The CPU count (uint8 pairs packed into int16 codes, 256 // k position lanes, one cached lane pattern per k)
    against np.add.at, with lengths that are not multiples of the lanes, a short input after a long one, and long
    runs of one pair."""
    rng = np.random.default_rng(0)
    for k in (20, 34):
        for length in (1, 7, 9, 5000, 64, 3):
            gt = rng.integers(0, k, length)
            pred = rng.integers(0, k, length)
            gt[: length // 2] = pred[: length // 2] = k - 1  # a run: every lane sees the same counter
            expected = np.zeros((k, k), np.int64)
            np.add.at(expected, (gt, pred), 1)
            for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
                got = count_pairs(torch.from_numpy(gt).to(dtype), torch.from_numpy(pred).to(dtype), k)
                assert got.dtype == torch.int64
                np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"k={k} n={length} {dtype}")


def _count_in_forked_child(queue, gt: torch.Tensor, pred: torch.Tensor) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do: torch's own parallel ops hang in a forked child otherwise
    queue.put((metrics_module._pool is None, count_pairs(gt, pred, 34).numpy()))  # numpy: pickled, not shared


def test_large_inputs_are_counted_in_parts_and_a_forked_child_drops_the_pool() -> None:
    """A 2048x1024 frame with 2 intra-op threads is split across the count's thread pool; the counts equal the
    direct ones. A child forked after the pool exists (a DataLoader worker) starts without it (its threads do not
    survive the fork) and counts correctly."""
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 34, (1024, 2048)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.9, gt, rng.integers(0, 34, gt.shape)).astype(np.uint8)
    gt[:300], pred[:300] = 7, 7  # long runs
    expected = np.bincount(gt.astype(np.int64).ravel() * 34 + pred.ravel(), minlength=34 * 34).reshape(34, 34)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    metrics_module._reset_pool()  # an earlier test may have made it: only this call may make it here
    try:
        got = count_pairs(torch.from_numpy(gt), torch.from_numpy(pred), 34)
        assert metrics_module._pool is not None, "the split path did not run"
        np.testing.assert_array_equal(got.numpy(), expected)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        args = (queue, torch.from_numpy(gt), torch.from_numpy(pred))
        child = context.Process(target=_count_in_forked_child, args=args)
        child.start()
        dropped, counted = queue.get(timeout=120)
        child.join(timeout=60)
        assert dropped, "the forked child kept the parent's pool"
        np.testing.assert_array_equal(counted, expected)
        assert child.exitcode == 0
    finally:
        torch.set_num_threads(threads)


def test_void_ids_beyond_int16_count_as_void() -> None:
    """Clamping happens before the uint8 narrowing: id 40000 must not wrap around onto a class."""
    pred = torch.tensor([40000, 3, 65536 + 3, 255])
    gt = torch.tensor([3, 40000, 3, 3])
    mat = confusion(pred, gt).numpy()
    assert mat[3, 3] == 0 and mat[3, N] == 3 and mat[N, 3] == 1 and mat.sum() == 4


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
