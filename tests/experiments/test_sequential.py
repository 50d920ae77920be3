"""Group-sequential equivalence (experiments.sequential): published boundaries, and by simulation the type I error at
±margin, the power at Δ = 0, the expected seeds and the pilot rule (analysis.sequential_sim).

Every simulated figure is asserted with a margin of at least 4 Monte Carlo standard errors (se stated beside it),
from fixed seeds. Reference figures: /work/shared/reference/study-design.md (200 000 replicates each, so their own
se is as large as ours; both enter the margin). `python -m analysis.sequential_sim` prints them all.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.power import tost_power
from analysis.sequential_sim import outcomes, simulate
from analysis.stats import tost_equivalence
from experiments.sequential import SequentialDesign, analyse, boundaries, decision, raised_maximum, spent_alpha

LOOKS = (4, 8, 12, 16)
OBF = SequentialDesign(LOOKS, 0.5)
POCOCK = SequentialDesign(LOOKS, 0.5, spending="pocock")
FUTILITY = SequentialDesign(LOOKS, 0.5, futility=True)
PILOT = SequentialDesign(LOOKS, 0.5, futility=True, max_seeds=40, planning_sd=0.46)
REPLICATES = 200_000  # se of a probability near 0.05: 0.00049; near 0.8: 0.00089


def test_obrien_fleming_boundaries_equal_the_published_ones() -> None:
    """Lan-DeMets O'Brien-Fleming, 4 equally spaced looks, one-sided 0.025 (gsDesign sfLDOF): 4.333 … 2.014."""
    z = boundaries((1, 2, 3, 4), spent_alpha("obrien-fleming", 0.025, np.arange(1, 5) / 4))
    assert z == pytest.approx([4.333, 2.963, 2.359, 2.014], abs=1e-3)
    assert OBF.nominal() == pytest.approx([0.0001, 0.0055, 0.0219, 0.0427], abs=5e-5)  # the reference's α = 0.05
    assert spent_alpha("pocock", 0.05, [1.0])[0] == pytest.approx(0.05) == spent_alpha("obrien-fleming", 0.05, [1])[0]
    assert POCOCK.z_bounds()[0] == pytest.approx(sps.norm.isf(0.05 * math.log1p((math.e - 1) / 4)))


@pytest.mark.parametrize("design", [OBF, POCOCK], ids=["obrien-fleming", "pocock"])
def test_the_boundaries_spend_what_the_spending_function_says(design: SequentialDesign) -> None:
    """Look statistics drawn from their joint law (Brownian motion at the looks): the share first crossing at
    look k equals α(t_k) − α(t_{k−1}); 1 000 000 draws, se ≤ 0.00014 per look."""
    rng = np.random.default_rng(11)
    steps = rng.standard_normal((1_000_000, len(LOOKS))) * np.sqrt(np.diff((0, *LOOKS)))
    z = np.cumsum(steps, axis=1) / np.sqrt(LOOKS)
    crossed = z >= design.z_bounds()
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    shares = np.array([(first == k).mean() for k in range(len(LOOKS))])
    spent = np.diff((0, *design.cumulative_alpha()))
    assert np.all(np.abs(shares - spent) <= 4 * np.sqrt(spent / 1_000_000) + 1e-5)


@pytest.mark.parametrize(
    ("design", "delta", "sds"),
    [
        (OBF, 0.5, (0.46, 0.46)),
        (FUTILITY, -0.5, (0.3, 0.6)),
        (POCOCK, 0.5, (0.6, 0.3)),
        (SequentialDesign(LOOKS, 0.5, paired=True), -0.5, (0.46, 0.46)),
    ],
    ids=["obf-equal-sds", "futility-unequal", "pocock-unequal", "paired"],
)
def test_equivalence_at_the_margin_is_declared_at_most_alpha(design, delta, sds) -> None:
    """P(equivalence) at Δ = ±margin ≤ α + 4 se (se ≈ 0.0005 at 200 000 replicates); observed 0.039–0.050."""
    sim = simulate(design, delta, *sds, correlation=0.5 if design.paired else 0.0, replicates=REPLICATES, seed=21)
    assert sim.p_equivalent <= design.alpha + 4 * sim.p_equivalent_se


def test_power_and_expected_seeds_match_the_reference_simulation() -> None:
    """sd 0.46, margin 0.5, α = 0.05: OBF power 0.809, Pocock 0.688 (se of each side 0.0009 and 0.0010);
    OBF + futility expected seeds 14.1 / 14.0 / 11.5 / 8.8 / 8.1 at Δ = 0 … 1.0 (printed to 0.1; se ≤ 0.02)."""
    for design, reference in ((OBF, 0.809), (POCOCK, 0.688)):
        sim = simulate(design, 0.0, 0.46, replicates=REPLICATES, seed=22)
        assert sim.p_equivalent == pytest.approx(reference, abs=4 * math.sqrt(2) * sim.p_equivalent_se + 5e-4)
    for delta, reference in zip((0, 0.25, 0.5, 0.75, 1.0), (14.1, 14.0, 11.5, 8.8, 8.1), strict=True):
        sim = simulate(FUTILITY, delta, 0.46, replicates=50_000, seed=23)
        assert sim.expected_seeds == pytest.approx(reference, abs=4 * math.sqrt(2) * sim.expected_seeds_se + 0.05)


def test_the_fixed_design_equals_the_exact_welch_tost_power() -> None:
    """One look at 16 seeds is the fixed study: simulated power equals analysis.power's integral (se 0.0009)."""
    sim = simulate(SequentialDesign((16,), 0.5), 0.1, 0.46, replicates=REPLICATES, seed=24)
    assert sim.p_equivalent == pytest.approx(tost_power(16, 16, 0.46, 0.5, 0.1), abs=4 * sim.p_equivalent_se)


@pytest.mark.parametrize(
    ("sds", "replicates"), [((0.46, 0.46), 100_000), ((0.3, 0.6), 300_000)], ids=["equal", "unequal"]
)
def test_the_pilot_rule_keeps_the_type_one_error(sds: tuple[float, float], replicates: int) -> None:
    """Raising the maximum from the first look's sd (planned for 0.46, cap 40): P(equivalence) at Δ = +margin
    ≤ α + 4 se (se 0.0007 and 0.0004; observed 0.046 and 0.048). Without futility, the larger figure."""
    design = SequentialDesign(LOOKS, 0.5, max_seeds=40, planning_sd=0.46)
    sim = simulate(design, 0.5, *sds, replicates=replicates, seed=25)
    assert sim.p_equivalent <= design.alpha + 4 * sim.p_equivalent_se


def test_the_pilot_buys_power_when_the_sd_was_underestimated() -> None:
    """True sd 0.7 against a plan for 0.46: without the pilot 16 seeds give ~0.26; with it the study grows
    (se of the powers ≤ 0.0023 at 50 000 replicates, of the seeds ≤ 0.03)."""
    fixed = simulate(FUTILITY, 0.0, 0.7, replicates=50_000, seed=26)
    piloted = simulate(PILOT, 0.0, 0.7, replicates=50_000, seed=26)
    assert fixed.p_equivalent < 0.35 < 0.55 < piloted.p_equivalent
    assert 20 < piloted.expected_seeds <= 40 == max(piloted.stop_share)
    assert raised_maximum(LOOKS, 0.46, 0.7, 40) == 40 and raised_maximum(LOOKS, 0.46, 0.5, 40) == 20
    assert raised_maximum(LOOKS, 0.46, 0.3, 40) == 16 and PILOT.with_maximum(40).looks == (4, 16, 28, 40)


def test_analyse_decides_as_the_vectorised_simulation() -> None:
    rng = np.random.default_rng(27)
    a = rng.normal(0.3, 0.6, (300, PILOT.cap))
    b = rng.normal(0.0, 0.6, (300, PILOT.cap))
    stops = outcomes(PILOT, a, b)
    for row, stop in enumerate(stops):
        looks = analyse(a[row], b[row], PILOT)
        assert (looks[-1].n, looks[-1].equivalent) == (abs(stop), stop < 0)
        assert [look.equivalent or look.futile for look in looks[:-1]] == [False] * (len(looks) - 1)
    assert len(set(np.abs(stops))) > 4  # the rows stopped at several looks, raised maxima among them
    assert decision(analyse(a[0][:3], b[0][:3], PILOT), PILOT).startswith("continue: the first look needs 4")
    words = {decision(analyse(a[row], b[row], PILOT), PILOT).split(" ")[0] for row in range(40)}
    assert words == {"equivalent", "not"}
    assert decision(analyse(a[0][:4], b[0][:4], FUTILITY), FUTILITY) == "continue: look 2 needs 8 seeds per backbone"


def test_a_single_look_is_the_projects_tost_and_every_look_has_its_rci() -> None:
    rng = np.random.default_rng(28)
    a, b = rng.normal(0.1, 0.4, 16), rng.normal(0, 0.5, 16)
    (look,) = analyse(a, b, SequentialDesign((16,), 0.5))
    tost = tost_equivalence(a, b, 0.5)
    assert (look.rci_low, look.rci_high) == pytest.approx((tost.ci90_low, tost.ci90_high))
    assert look.equivalent == tost.equivalent
    looks = analyse(a, b, OBF)
    assert [x.n for x in looks] == list(LOOKS[: len(looks)])
    widths = [x.rci_high - x.rci_low for x in looks]
    assert all(w > tost.ci90_high - tost.ci90_low for w in widths)  # repeated CIs are wider than the naive one


def test_the_paired_analysis_reports_the_correlation_and_gains_power_from_it() -> None:
    rng = np.random.default_rng(29)
    shared = rng.normal(0, 0.4, 16)
    paired = SequentialDesign(LOOKS, 0.5, paired=True)
    looks = analyse(shared + rng.normal(0, 0.2, 16), shared + rng.normal(0, 0.2, 16), paired)
    assert all(x.correlation > 0.5 for x in looks) and all(x.df == x.n - 1 for x in looks)
    welch = simulate(OBF, 0.0, 0.46, correlation=0.5, replicates=50_000, seed=30)
    with_pairs = simulate(paired, 0.0, 0.46, correlation=0.5, replicates=50_000, seed=30)
    assert with_pairs.p_equivalent > welch.p_equivalent + 0.05  # se of each ≤ 0.0023


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"looks": (4, 4, 8)}, "increasing"),
        ({"looks": (1, 4)}, "from 2"),
        ({"looks": tuple(range(2, 20, 2))}, "1 to 6"),
        ({"looks": (4, 8), "spending": "haybittle"}, "spending must be one of"),
    ],
)
def test_a_bad_design_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequentialDesign(margin=0.5, **kwargs)
