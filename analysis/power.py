"""Power of the study's equivalence test: Welch's two one-sided tests (analysis.stats.tost_equivalence).

Per-seed final mIoU of each backbone is assumed normal with a common run-to-run sd. The test rejects (shows
equivalence) when −m + t·se < d̂ < m − t·se, with se and Welch's df from the two sample variances. d̂ is
independent of those variances, so the power is the expectation over them (two scaled χ² laws, integrated on
a grid of their quantiles) of P(d̂ in that band) under the true Δ.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def tost_power(
    n_a: int, n_b: int, sd: float, margin: float, delta: float = 0.0, alpha: float = 0.05, grid: int = 128
) -> float:
    """P(Welch TOST shows |Δ| < margin) with n_a and n_b seeds, run-to-run sd and true difference delta."""
    if n_a < 2 or n_b < 2:
        return 0.0
    u = (np.arange(grid) + 0.5) / grid  # midpoint quantiles of each sample variance's law
    var_a = sd**2 * sps.chi2.ppf(u, n_a - 1)[:, None] / (n_a - 1)
    var_b = sd**2 * sps.chi2.ppf(u, n_b - 1)[None, :] / (n_b - 1)
    va, vb = var_a / n_a, var_b / n_b
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = margin - sps.t.ppf(1 - alpha, df) * se
    spread = sd * np.sqrt(1 / n_a + 1 / n_b)  # sd of d̂
    inside = sps.norm.cdf((half - delta) / spread) - sps.norm.cdf((-half - delta) / spread)
    return float(np.where(half > 0, inside, 0.0).mean())


def seeds_for_power(
    sd: float, margin: float, delta: float = 0.0, alpha: float = 0.05, target: float = 0.8, most: int = 500
) -> int | None:
    """The fewest seeds per backbone (equal n) whose TOST power reaches ``target``; None if not within ``most``
    (always None when |delta| ≥ margin: then equivalence is false and its power stays below alpha)."""
    if abs(delta) >= margin:
        return None
    low, high = 2, most
    if tost_power(high, high, sd, margin, delta, alpha) < target:
        return None
    while low < high:  # power grows with n
        mid = (low + high) // 2
        if tost_power(mid, mid, sd, margin, delta, alpha) >= target:
            high = mid
        else:
            low = mid + 1
    return low
