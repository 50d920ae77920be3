"""Statistics for the question: seed summaries, a paired image bootstrap of Δ mIoU, and a TOST equivalence test.

All mIoU values here are in points (×100), as in the published tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from deeplab.metrics import iou_from_confusion


def seed_summary(
    runs: pd.DataFrame, value: str = "miou", by: tuple[str, ...] | list[str] = ("backbone", "iterations")
) -> pd.DataFrame:
    """Per group of ``by`` (backbone and the cell's axes): n seeds, mean, std and the 95% t-interval of the mean,
    clipped to the possible 0–100 points (NaN when n < 2)."""
    rows = []
    for key, group in runs.dropna(subset=[value]).groupby(list(by), dropna=False):
        x = group[value].to_numpy(dtype=float)
        n, mean = len(x), float(x.mean())
        std = float(x.std(ddof=1)) if n > 1 else float("nan")
        half = float(sps.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "n": n,
                "mean": mean,
                "std": std,
                "ci_low": max(mean - half, 0.0) if n > 1 else float("nan"),
                "ci_high": min(mean + half, 100.0) if n > 1 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _miou_rows(mats: np.ndarray, seed_metric: bool) -> np.ndarray:
    """mIoU (points) of each matrix in a stack (B, n+1, n+1), mean over defined classes."""
    iou = iou_from_confusion(mats, seed_metric=seed_metric)
    with np.errstate(invalid="ignore"):
        return 100 * np.nanmean(iou, axis=-1)


@dataclass
class BootstrapResult:
    delta: float  # mIoU(a) − mIoU(b) on all images, points
    ci_low: float
    ci_high: float
    n_images: int
    n_boot: int


def bootstrap_miou_delta(
    mats_a: np.ndarray,
    mats_b: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    seed_metric: bool = False,
    level: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap over validation images of Δ mIoU = mIoU(a) − mIoU(b).

    ``mats_a``/``mats_b`` are per-image confusion matrices (N, n+1, n+1) on the SAME images in the same order
    (for several seeds, sum each backbone's matrices over its seeds first: seeds pooled, images resampled).
    Each replicate draws N images with replacement and recomputes both mIoUs from the summed matrices.
    """
    if mats_a.shape != mats_b.shape:
        raise ValueError(f"paired bootstrap needs the same images: {mats_a.shape} vs {mats_b.shape}")
    n = mats_a.shape[0]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # (B, N) draw counts
    flat_a, flat_b = mats_a.reshape(n, -1).astype(np.float64), mats_b.reshape(n, -1).astype(np.float64)
    shape = (n_boot, *mats_a.shape[1:])
    deltas = _miou_rows((weights @ flat_a).reshape(shape), seed_metric) - _miou_rows(
        (weights @ flat_b).reshape(shape), seed_metric
    )
    point = float(_miou_rows(mats_a.sum(0)[None], seed_metric)[0] - _miou_rows(mats_b.sum(0)[None], seed_metric)[0])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return BootstrapResult(point, float(low), float(high), n, n_boot)


@dataclass
class TostResult:
    delta: float  # mean(a) − mean(b), points
    margin: float
    p_value: float  # max of the two one-sided p-values; NaN when it cannot be computed
    ci90_low: float
    ci90_high: float
    equivalent: bool | None  # None: not enough seeds to test


def tost_equivalence(a: np.ndarray, b: np.ndarray, margin: float = 0.5, alpha: float = 0.05) -> TostResult:
    """Welch two one-sided tests: is |mean(a) − mean(b)| < margin? (values and margin in points)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    if len(a) < 2 or len(b) < 2:
        return TostResult(delta, margin, float("nan"), float("nan"), float("nan"), None)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        inside = abs(delta) < margin
        return TostResult(delta, margin, 0.0 if inside else 1.0, delta, delta, inside)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p_lower = sps.t.sf((delta + margin) / se, df)  # H0: delta <= -margin
    p_upper = sps.t.cdf((delta - margin) / se, df)  # H0: delta >= +margin
    p = float(max(p_lower, p_upper))
    half = float(sps.t.ppf(1 - alpha, df) * se)
    return TostResult(delta, margin, p, delta - half, delta + half, p < alpha)


def welch_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Welch's interval of mean(a) − mean(b) for unpaired samples (NaN when either has < 2 values)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    delta = float(a.mean() - b.mean())
    if va + vb == 0:
        return delta, delta
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(sps.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb))
    return delta - half, delta + half
