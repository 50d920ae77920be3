"""Confusion-matrix metric with the official Cityscapes semantics, plus the seed's March-2020 variant.

The matrix is ``(n+1)×(n+1)``: rows are ground-truth train ids, columns predictions; row ``n`` counts GT pixels
of void (ignored) labels and column ``n`` predictions of a void label.

NaN rule (as in the official evaluation): a class's IoU is NaN when ``TP + FP + FN = 0`` (absent from the
ground truth and never predicted); mIoU is the mean over classes with a defined IoU.
- Official: ``FN_c`` counts every GT-``c`` pixel not predicted ``c`` (void predictions included); ``FP_c``
  counts non-void GT pixels predicted ``c`` (GT-void pixels are skipped).
- Seed-compatible: ``FP_c`` additionally counts GT-void pixels predicted ``c`` (void in the union).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from deeplab.labels import CATEGORY_NAMES, CLASS_CATEGORIES, NUM_CLASSES

_SPLIT_MIN = 1 << 20  # pixels from which the CPU count is split across torch's intra-op threads
_lane_patterns: dict[int, np.ndarray] = {}
_scratch = threading.local()  # per-thread code buffers: fresh 6 MB arrays per frame cost ~2 ms in page faults
_pool: tuple[ThreadPoolExecutor, int] | None = None  # (pool, its number of workers)


def _reset_pool() -> None:  # a forked child (DataLoader worker) inherits the pool object, none of its threads
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_reset_pool)


def _lane_count(gt: np.ndarray, pred: np.ndarray, pattern: np.ndarray, k: int) -> torch.Tensor:
    """uint8 pairs → one int16 code each, ``gt·256 + (pred + lane·k)``, counted by one bincount: three cheap passes
    (uint8 add, widening shift, or) instead of int16 arithmetic on promoted inputs."""
    lanes, n = 256 // k, gt.size
    if getattr(_scratch, "low", np.empty(0)).size < n:
        _scratch.low, _scratch.codes = np.empty(n, np.uint8), np.empty(n, np.int16)
    low, codes = _scratch.low[:n], _scratch.codes[:n]
    np.add(pred, pattern[:n], out=low)  # pred + lane·k stays below 256: no carry into gt's byte
    np.left_shift(gt, 8, out=codes, dtype=np.int16)
    np.bitwise_or(codes, low, out=codes)
    hist = torch.bincount(torch.from_numpy(codes), minlength=k * 256)
    return hist.view(k, 256)[:, : lanes * k].reshape(k, lanes, k).sum(1)


def count_pairs(gt: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """``k×k`` int64 counts of the ``(gt, pred)`` value pairs (rows ``gt``); both hold values in ``0..k-1``.

    On CPU (k <= 128) each pair becomes one int16 code: gt in the high byte, pred plus a position lane in the low
    byte. Pixel ``i`` counts into lane ``i % (256 // k)`` (label maps are long runs of one pair: with one counter
    per pair each increment would wait for the previous one). A large input is split into one part per torch
    intra-op thread, counted in parallel (bincount itself is serial). bench/bench_metric.py measures it against
    the official evaluation.
    """
    global _pool
    gt, pred = gt.reshape(-1), pred.reshape(-1)
    if gt.device.type != "cpu" or k > 128:
        codes = gt.long() * k + pred.long()
        return torch.bincount(codes, minlength=k * k).reshape(k, k)
    gt, pred = (t.numpy() if t.dtype == torch.uint8 else t.to(torch.uint8).numpy() for t in (gt, pred))
    pattern = _lane_patterns.get(k)
    if pattern is None or pattern.size < gt.size:  # one pattern per k, grown to the largest input seen
        lanes = 256 // k
        pattern = np.tile((np.arange(lanes) * k).astype(np.uint8), -(-gt.size // lanes))
        _lane_patterns[k] = pattern
    parts = min(torch.get_num_threads(), gt.size // _SPLIT_MIN)
    if parts < 2:
        return _lane_count(gt, pred, pattern, k)
    if _pool is None or _pool[1] < parts - 1:
        _pool = (ThreadPoolExecutor(parts - 1, thread_name_prefix="count_pairs"), parts - 1)
    step = -(-gt.size // parts)
    bounds = [(i, min(i + step, gt.size)) for i in range(0, gt.size, step)]
    futures = [_pool[0].submit(_lane_count, gt[a:b], pred[a:b], pattern, k) for a, b in bounds[1:]]
    total = _lane_count(gt[: bounds[0][1]], pred[: bounds[0][1]], pattern, k)
    for future in futures:
        total += future.result()
    return total


def confusion(pred: torch.Tensor, gt: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """``(n+1)×(n+1)`` int64 matrix of one prediction/GT pair of train ids (values ``>= n`` mean void)."""
    n = num_classes
    gt, pred = (t.clamp(max=n) for t in (gt, pred))  # before any narrowing: a large id must not wrap around
    return count_pairs(gt, pred, n + 1)


def iou_from_confusion(mat: np.ndarray, seed_metric: bool = False) -> np.ndarray:
    """Per-class IoU (float64, NaN when undefined) of an ``(n+1)×(n+1)`` matrix or a stack ``(..., n+1, n+1)``."""
    mat = np.asarray(mat, dtype=np.float64)
    n = mat.shape[-1] - 1
    tp = np.diagonal(mat, axis1=-2, axis2=-1)[..., :n]
    fn = mat[..., :n, :].sum(axis=-1) - tp
    fp_rows = mat[..., :, :n] if seed_metric else mat[..., :n, :n]
    fp = fp_rows.sum(axis=-2) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def mean_iou(iou: np.ndarray) -> float:
    """Mean over classes with a defined IoU (NaN when none is).

    Summed left to right in Python floats, as the official script does, so the result is bit-equal to it.
    """
    defined = [float(v) for v in np.asarray(iou, dtype=np.float64) if not np.isnan(v)]
    total = 0.0
    for value in defined:
        total += value
    return total / len(defined) if defined else float("nan")


def category_iou(mat: np.ndarray) -> np.ndarray:
    """IoU of the 7 categories from a class matrix of train-id predictions (official category semantics)."""
    mat = np.asarray(mat, dtype=np.float64)
    n = mat.shape[-1] - 1
    cats = np.array([CATEGORY_NAMES.index(c) for c in CLASS_CATEGORIES[:n]])
    onehot = np.zeros((n + 1, len(CATEGORY_NAMES) + 1))
    onehot[np.arange(n), cats] = 1
    onehot[n, -1] = 1  # void stays void
    cat_mat = onehot.T @ mat @ onehot
    return iou_from_confusion(cat_mat)


@dataclass
class MetricResult:
    iou: np.ndarray
    miou: float
    iou_seed: np.ndarray
    miou_seed: float
    category_iou: np.ndarray
    category_miou: float


class ConfusionMatrix:
    """Accumulates ``(n+1)×(n+1)`` confusion counts on the device of the predictions."""

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str | None = None) -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Add one batch; returns its own matrix (for per-image bookkeeping)."""
        mat = confusion(pred, gt.to(pred.device), self.num_classes)
        self.mat = self.mat.to(mat.device) + mat
        return mat

    def reset(self) -> None:
        self.mat.zero_()

    def reduce_from_all_processes(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self) -> MetricResult:
        mat = self.mat.cpu().numpy()
        iou, iou_seed = iou_from_confusion(mat), iou_from_confusion(mat, seed_metric=True)
        cat = category_iou(mat) if self.num_classes == NUM_CLASSES else np.full(len(CATEGORY_NAMES), np.nan)
        return MetricResult(iou, mean_iou(iou), iou_seed, mean_iou(iou_seed), cat, mean_iou(cat))
