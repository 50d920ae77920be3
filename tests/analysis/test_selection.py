"""The best-of-N selection-bias estimator on simulated validation curves whose noise and inflation are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.selection import ar1_noise, expected_best, expected_max_iid, plateau_noise, selection_bias

MAX_ITER = 60000
ITERATIONS = np.arange(1, 162) * 372  # one validation per epoch, like the fork's 60k log


def _trend(it: np.ndarray) -> np.ndarray:
    return 78 - 12 * np.exp(-it / 12000)  # still rising a little on the plateau, as the fork's curves do


def _curves(sigma: float, rho: float, dips: int, n: int, seed: int) -> np.ndarray:
    """n simulated curves: trend + AR(1) noise, and a few deep one-validation dips on the plateau."""
    rng = np.random.default_rng(seed)
    curves = _trend(ITERATIONS)[None, :] + ar1_noise(len(ITERATIONS), sigma, rho, n, rng)
    late = np.flatnonzero(ITERATIONS >= 0.75 * MAX_ITER)
    for curve in curves:
        curve[rng.choice(late[:-1], dips, replace=False)] -= rng.uniform(5, 20, dips)
    return curves


def test_the_iid_yardstick_and_the_monte_carlo_agree() -> None:
    assert expected_max_iid(1) == pytest.approx(0, abs=1e-9)
    assert expected_max_iid(2) == pytest.approx(1 / math.sqrt(math.pi))
    assert expected_best(np.zeros(41), 0.5, 0.0, draws=40000) == pytest.approx(0.5 * expected_max_iid(41), abs=0.01)
    # correlated noise has fewer independent chances to be high: the expected best shrinks as rho grows
    best = [expected_best(np.zeros(41), 0.5, rho, draws=20000) for rho in (0.0, 0.5, 0.9)]
    assert best[0] > best[1] > best[2] > 0
    noise = ar1_noise(400, 2.0, 0.6, 200, np.random.default_rng(1))
    assert noise.std() == pytest.approx(2.0, rel=0.05)
    assert np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1] == pytest.approx(0.6, abs=0.03)


@pytest.mark.parametrize(("sigma", "rho"), [(0.4, 0.3), (0.6, 0.0)])
def test_the_estimator_recovers_known_noise_and_inflation(sigma: float, rho: float) -> None:
    curves = _curves(sigma, rho, dips=3, n=150, seed=7)
    late = ITERATIONS >= 0.75 * MAX_ITER
    # the known answer: how far the best plateau validation lands above the level a final model scores
    truth = float(np.mean(curves[:, late].max(axis=1) - _trend(ITERATIONS[late])[-1]))
    fits = [selection_bias(ITERATIONS, curve, MAX_ITER, draws=2000) for curve in curves]
    assert np.mean([f.noise.sigma for f in fits]) == pytest.approx(sigma, rel=0.1)
    assert np.mean([f.noise.rho for f in fits]) == pytest.approx(rho, abs=0.1)
    assert np.mean([f.noise.trend_final for f in fits]) == pytest.approx(_trend(ITERATIONS[late])[-1], abs=0.1)
    assert np.mean([f.inflation for f in fits]) == pytest.approx(truth, rel=0.1)
    assert all(f.noise.outliers >= 2 for f in fits[:20])  # the dips are seen as dips, not as noise


def test_the_dips_do_not_inflate_the_noise() -> None:
    clean = _curves(0.4, 0.0, dips=0, n=1, seed=3)[0]
    dipped = clean.copy()
    dipped[-5] -= 25
    a, b = plateau_noise(ITERATIONS, clean, MAX_ITER), plateau_noise(ITERATIONS, dipped, MAX_ITER)
    assert b.sigma == pytest.approx(a.sigma, rel=0.15) and b.outliers == a.outliers + 1


def test_too_few_plateau_validations_is_an_error() -> None:
    with pytest.raises(AnalysisError, match="needs 8 validations after iteration 45000, got 3"):
        plateau_noise(np.array([1000, 46000, 50000, 59000]), np.array([50.0, 77, 78, 77.5]), MAX_ITER)
