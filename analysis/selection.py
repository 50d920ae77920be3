"""Best-of-N selection bias: how much picking the best of N validations inflates a number, from the late curve.

Method (all values in points):
- the plateau is the last quarter of the schedule (``window``); there the curve is a smooth trend plus noise;
- the trend is a quadratic in iteration fitted by Huber's robust regression (statsmodels RLM), so the
  occasional deep dip of a single validation does not pull it; dips (residuals beyond 3 robust sd) are left
  out of the noise estimate;
- the noise is an AR(1) process (successive validations share most of their weights): its sd is the robust
  (MAD) scale of the other residuals, its lag-1 autocorrelation theirs; both are corrected for the
  bias of estimating them from a short detrended series by simulation (the same estimates on simulated AR(1)
  series of the same design, matched to the observed ones); the autocorrelation is kept in [0, 0.95];
- the expected best of the plateau's validations is E[max_i(trend_i + e_i)] under that noise (Monte Carlo);
  the inflation is that minus the trend at the last validation, the level a final model is expected to score.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import integrate
from scipy import stats as sps

from analysis.errors import AnalysisError

MIN_POINTS = 8
MAD_CONSTANT = float(sps.norm.ppf(0.75))  # the MAD of a unit normal


@dataclass
class PlateauNoise:
    start: int  # first iteration in the window
    iterations: np.ndarray  # the window's validation iterations
    values: np.ndarray  # and their mIoU (points)
    trend: np.ndarray  # the fitted trend there
    sigma: float
    rho: float
    outliers: int  # residuals beyond 3 sigma (dips)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def trend_final(self) -> float:
        return float(self.trend[-1])

    @property
    def n_effective(self) -> float:
        """Independent validations worth of the window under AR(1)."""
        return self.n * (1 - self.rho) / (1 + self.rho)


def plateau_noise(iterations: np.ndarray, values: np.ndarray, max_iter: int, window: float = 0.25) -> PlateauNoise:
    """Trend and noise of a validation curve on its last ``window`` of ``max_iter`` (see the module's method)."""
    import statsmodels.api as sm

    iterations, values = np.asarray(iterations, dtype=float), np.asarray(values, dtype=float)
    late = (iterations >= (1 - window) * max_iter) & np.isfinite(values)
    if late.sum() < MIN_POINTS:
        raise AnalysisError(
            f"plateau noise needs {MIN_POINTS} validations after iteration {(1 - window) * max_iter:.0f}, "
            f"got {int(late.sum())}"
        )
    it, y = iterations[late], values[late]
    design = np.vander((it - it[-1]) / max_iter, 3)  # x², x, 1: the intercept is the trend at the last validation
    fit = sm.RLM(y, design, M=sm.robust.norms.HuberT()).fit()
    trend = design @ fit.params
    residuals = y - trend
    calm = np.abs(residuals) <= 3 * fit.scale  # dips are left out of the noise estimates
    scale = float(np.median(np.abs(residuals[calm])) / MAD_CONSTANT)
    sigma, rho = _debias(scale, float(_lag1(residuals, calm)), design)
    return PlateauNoise(int(it[0]), it, y, trend, sigma, rho, int((~calm).sum()))


def _lag1(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of mean-zero series (last axis), over the pairs and points ``keep`` allows."""
    both = keep[..., :-1] & keep[..., 1:]
    num = (x[..., :-1] * x[..., 1:] * both).sum(-1) / np.maximum(both.sum(-1), 1)
    den = (x**2 * keep).sum(-1) / np.maximum(keep.sum(-1), 1)
    return num / np.where(den > 0, den, np.inf)


@functools.lru_cache(maxsize=64)
def _calibration(design_bytes: bytes, n: int, draws: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (lag-1 autocorrelation, MAD scale) of detrended unit-sd AR(1) noise over a grid of true
    autocorrelations, for one design (seeded: the same design always gets the same correction)."""
    design = np.frombuffer(design_bytes).reshape(n, -1)
    residual = np.eye(n) - design @ np.linalg.pinv(design)
    grid = np.linspace(0, 0.95, 20)
    rng = np.random.default_rng(0)
    seen_rho, seen_sd = [], []
    for g in grid:
        r = ar1_noise(n, 1.0, g, draws, rng) @ residual.T
        seen_rho.append(_lag1(r, np.ones_like(r, dtype=bool)).mean())
        seen_sd.append((np.median(np.abs(r), axis=-1) / MAD_CONSTANT).mean())  # RLM's scale: MAD about 0
    return grid, np.array(seen_rho), np.array(seen_sd)


def _debias(sigma: float, rho: float, design: np.ndarray) -> tuple[float, float]:
    """(sd, lag-1 autocorrelation) corrected for estimating them from a short detrended series."""
    grid, seen_rho, seen_sd = _calibration(np.ascontiguousarray(design, dtype=float).tobytes(), len(design))
    true_rho = float(np.interp(rho, seen_rho, grid))  # clamps to [0, 0.95]
    return sigma / float(np.interp(true_rho, grid, seen_sd)), true_rho


def ar1_noise(n: int, sigma: float, rho: float, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n) stationary AR(1) noise with sd ``sigma`` and lag-1 correlation ``rho``."""
    z = rng.standard_normal((draws, n))
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for t in range(1, n):
        e[:, t] = rho * e[:, t - 1] + np.sqrt(1 - rho**2) * z[:, t]
    return sigma * e


def expected_best(trend: np.ndarray, sigma: float, rho: float, draws: int = 20000, seed: int = 0) -> float:
    """E[max_i(trend_i + e_i)] for AR(1) noise e (Monte Carlo, seeded)."""
    noise = ar1_noise(len(trend), sigma, rho, draws, np.random.default_rng(seed))
    return float((np.asarray(trend)[None, :] + noise).max(axis=1).mean())


def expected_max_iid(n: int) -> float:
    """E[max of n independent standard normals] (numerical integral; the iid yardstick)."""
    value, _ = integrate.quad(lambda x: x * n * sps.norm.pdf(x) * sps.norm.cdf(x) ** (n - 1), -10, 10, limit=200)
    return float(value)


@dataclass
class SelectionBias:
    noise: PlateauNoise
    final: float  # last validation
    best: float  # best validation of the whole log
    best_iteration: int
    expected_best: float  # E[best of the plateau's validations] under the fitted trend + noise

    @property
    def inflation(self) -> float:
        """Expected best-of-N pick minus the level a final model is expected to score."""
        return self.expected_best - self.noise.trend_final


def selection_bias(
    iterations: np.ndarray, values: np.ndarray, max_iter: int, window: float = 0.25, draws: int = 20000
) -> SelectionBias:
    """Final vs best of one validation curve (points) and the expected inflation of a best-of-N pick."""
    values = np.asarray(values, dtype=float)
    noise = plateau_noise(iterations, values, max_iter, window)
    best = int(np.nanargmax(values))
    expected = expected_best(noise.trend, noise.sigma, noise.rho, draws)
    return SelectionBias(noise, float(values[-1]), float(values[best]), int(iterations[best]), expected)
