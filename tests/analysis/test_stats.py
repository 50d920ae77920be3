"""Statistics on synthetic inputs with a known answer: CI coverage, TOST decisions, the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.stats import bootstrap_miou_delta, seed_summary, tost_equivalence


def test_seed_ci_covers_the_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    trials = 400
    for _ in range(trials):
        x = rng.normal(78.0, 0.3, size=3)
        frame = pd.DataFrame({"backbone": "resnet50", "iterations": 1, "miou": x})
        row = seed_summary(frame).iloc[0]
        hits += row.ci_low <= 78.0 <= row.ci_high
    assert 0.90 <= hits / trials <= 0.99


def test_seed_summary_with_one_seed_has_no_interval() -> None:
    row = seed_summary(pd.DataFrame({"backbone": ["r"], "iterations": [1], "miou": [50.0]})).iloc[0]
    assert row.n == 1 and row["mean"] == 50.0 and np.isnan(row.ci_low)


def test_tost_clear_cases() -> None:
    same = tost_equivalence(np.array([78.40, 78.45, 78.42, 78.38]), np.array([78.44, 78.41, 78.47, 78.43]), 0.5)
    assert same.equivalent is True and same.p_value < 0.05
    assert same.ci90_low > -0.5 and same.ci90_high < 0.5
    apart = tost_equivalence(np.array([77.0, 77.2, 77.1]), np.array([78.5, 78.6, 78.4]), 0.5)
    assert apart.equivalent is False and apart.delta == pytest.approx(-1.4, abs=1e-9)
    noisy = tost_equivalence(np.array([76.0, 80.0, 78.0]), np.array([77.0, 79.5, 78.0]), 0.5)
    assert noisy.equivalent is False  # too noisy to claim equivalence, though the means are close
    few = tost_equivalence(np.array([78.4]), np.array([78.5]), 0.5)
    assert few.equivalent is None


def test_tost_error_rate_at_the_margin_is_at_most_alpha() -> None:
    rng = np.random.default_rng(1)
    wrong = sum(tost_equivalence(rng.normal(0.5, 0.3, 5), rng.normal(0.0, 0.3, 5), 0.5).equivalent for _ in range(400))
    assert wrong / 400 <= 0.08  # true difference exactly at the margin: claims of equivalence are errors


def _per_image(rng: np.random.Generator, n_images: int, accuracy: float) -> np.ndarray:
    mats = np.zeros((n_images, 20, 20), np.int64)
    for i in range(n_images):
        gt = rng.integers(0, 19, 400)
        pred = np.where(rng.random(400) < accuracy, gt, rng.integers(0, 19, 400))
        np.add.at(mats[i], (gt, pred), 1)
    return mats


def test_bootstrap_detects_a_real_gap_and_not_a_null_one() -> None:
    rng = np.random.default_rng(2)
    good, bad = _per_image(rng, 60, 0.8), _per_image(rng, 60, 0.7)
    gap = bootstrap_miou_delta(good, bad, n_boot=500)
    assert gap.ci_low > 0 and gap.ci_low <= gap.delta <= gap.ci_high
    same = bootstrap_miou_delta(good, good, n_boot=200)
    assert same.delta == 0 and same.ci_low == 0 and same.ci_high == 0
    twin = _per_image(np.random.default_rng(3), 60, 0.8)
    null = bootstrap_miou_delta(good, twin, n_boot=500)
    assert null.ci_low < 0 < null.ci_high
    with pytest.raises(ValueError, match="same images"):
        bootstrap_miou_delta(good, good[:10])


@pytest.mark.parametrize("seed", range(6))
def test_tost_agrees_with_statsmodels_ttost_ind(seed: int) -> None:
    from statsmodels.stats.weightstats import ttost_ind

    rng = np.random.default_rng(seed)
    a = rng.normal(78.4, rng.uniform(0.05, 0.6), size=rng.integers(2, 9))
    b = rng.normal(78.4 + rng.uniform(-0.8, 0.8), rng.uniform(0.05, 0.6), size=rng.integers(2, 9))
    margin = float(rng.uniform(0.2, 1.0))
    ours = tost_equivalence(a, b, margin)
    p_value, _, _ = ttost_ind(a, b, -margin, margin, usevar="unequal")
    assert ours.p_value == pytest.approx(float(p_value), abs=1e-10)
    assert ours.equivalent is bool(p_value < 0.05)


def test_welch_interval_matches_scipy_and_needs_two_values_a_side() -> None:
    from scipy import stats as sps

    from analysis.stats import welch_interval

    a, b = np.array([70.1, 71.3, 69.8, 70.6]), np.array([72.0, 71.1, 73.2])
    low, high = welch_interval(a, b)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-10)
    assert np.isnan(welch_interval(a, b[:1])).all()


def test_seed_summary_interval_stays_within_the_possible_range() -> None:
    frame = pd.DataFrame({"backbone": "r", "iterations": 4, "miou": [0.5, 30.0]})
    row = seed_summary(frame).iloc[0]
    assert row.ci_low == 0.0 and row.ci_high <= 100.0  # the raw t-interval with 2 seeds goes below 0
