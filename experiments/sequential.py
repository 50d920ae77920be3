"""Group-sequential equivalence of two backbones: looks at planned seed counts, Lan-DeMets alpha spending,
repeated confidence intervals (Jennison & Turnbull 1993; 2000, ch. 6 and 9).

At look k (n_k seeds per backbone) the design spends α(t_k) − α(t_{k−1}) of the one-sided α, t_k = n_k / n_K.
The z boundaries c_k solve P(Z_1 < c_1, …, Z_{k−1} < c_{k−1}, Z_k ≥ c_k) = that increment under the joint law
of the look statistics, Cov(Z_i, Z_j) = √(n_i / n_j), integrated by scipy's multivariate normal CDF.

Small n: the seeds' sd is estimated, so each boundary is used through its nominal one-sided level
p_k = 1 − Φ(c_k) (the "significance level approach", Jennison & Turnbull 2000 §3.8): the look's critical value
is the t quantile t_{1−p_k} at that look's Welch df (n − 1 for the paired analysis). Equivalence at look k:
the repeated confidence interval d_k ± t_{1−p_k}·se_k lies inside ±margin (both one-sided tests at level p_k).
The RCIs hold jointly over all looks, so the last look's RCI is the answer; the naive interval after an early
stop is biased and is never computed here. Futility is non-binding: the boundaries ignore it, so obeying it
can only lower the type I error.

The first look is an internal pilot: its pooled within-backbone sd may raise the planned maximum (variance
scaling, capped by ``max_seeds``); the later looks are spread evenly up to the new maximum and spend
α(n_k / new maximum), the α the first look spent staying spent. Its type I error is checked by simulation
(analysis.sequential_sim), not assumed.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

SPENDING = ("obrien-fleming", "pocock")
MAX_LOOKS = 6  # scipy's multivariate normal CDF: seconds per boundary set beyond this
# A maximum raised by the pilot's sd lifts P(equivalence) at Δ = ±margin to ~0.052–0.054 at α = 0.05 (the final
# variance estimate runs low: a small pilot sd ends the study sooner). Spending 0.9 α keeps it below α for true sds
# from 0.2 to 1.0, equal or not (analysis.sequential_sim; tests/experiments/test_sequential.py).
PILOT_ALPHA_SHARE = 0.9


def spent_alpha(spending: str, alpha: float, t: np.ndarray) -> np.ndarray:
    """Cumulative one-sided α spent by information fraction t (Lan-DeMets O'Brien-Fleming or Pocock type)."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if spending == "obrien-fleming":
        with np.errstate(divide="ignore"):
            return 2 - 2 * sps.norm.cdf(sps.norm.isf(alpha / 2) / np.sqrt(t))
    if spending == "pocock":
        return alpha * np.log1p((math.e - 1) * t)
    raise ValueError(f"spending must be one of {', '.join(SPENDING)}, got {spending!r}")


@functools.lru_cache(maxsize=256)
def _bounds(looks: tuple[int, ...], cumulative: tuple[float, ...]) -> tuple[float, ...]:
    n = np.asarray(looks, dtype=float)
    cov = np.sqrt(np.minimum.outer(n, n) / np.maximum.outer(n, n))
    bounds = [float(sps.norm.isf(cumulative[0]))]
    below = 1 - cumulative[0]  # P(no crossing so far)
    rng = np.random.default_rng(0)  # the CDF is quasi-Monte Carlo: one stream makes the root deterministic
    for k in range(1, len(n)):
        step = cumulative[k] - cumulative[k - 1]
        if step <= 0:
            bounds.append(math.inf)
            continue

        def excess(c: float, k: int = k, step: float = step, below: float = below) -> float:
            upper = np.array([*bounds, c])
            joint = sps.multivariate_normal.cdf(upper, cov=cov[: k + 1, : k + 1], abseps=1e-5, releps=0, rng=rng)
            return below - joint - step

        # P(Z_k ≥ c) − cumulative[k−1] ≤ step ≤ P(Z_k ≥ c) brackets the root
        bounds.append(brentq(excess, sps.norm.isf(cumulative[k]) - 1e-3, sps.norm.isf(step) + 1e-3, xtol=1e-5))
        below -= step
    return tuple(bounds)


def boundaries(looks: tuple[int, ...] | list[int], cumulative_alpha: np.ndarray | list[float]) -> np.ndarray:
    """z boundaries of one-sided tests at looks after ``looks`` seeds, spending ``cumulative_alpha``."""
    cumulative = tuple(float(a) for a in np.maximum.accumulate(np.asarray(cumulative_alpha, dtype=float)))
    return np.array(_bounds(tuple(int(n) for n in looks), cumulative))


@dataclass(frozen=True)
class SequentialDesign:
    """Looks (seeds per backbone), one-sided α of each of the two tests, spending, optional futility and pilot.

    ``planning_sd`` is the sd the planned maximum (the last look) was sized for; with ``max_seeds`` above the
    last look, the first look's pooled sd may raise the maximum up to ``max_seeds``.
    """

    looks: tuple[int, ...]
    margin: float
    alpha: float = 0.05
    spending: str = "obrien-fleming"
    futility: bool = False
    max_seeds: int | None = None
    planning_sd: float | None = None
    paired: bool = False
    first_spent_of: int | None = None  # set after a pilot raise: the maximum the first look's spending used

    def __post_init__(self) -> None:
        looks = tuple(self.looks)
        if not looks or len(looks) > MAX_LOOKS or looks[0] < 2 or any(b <= a for a, b in itertools.pairwise(looks)):
            raise ValueError(f"looks must be 1 to {MAX_LOOKS} increasing seed counts from 2, got {looks}")
        if self.spending not in SPENDING:
            raise ValueError(f"spending must be one of {', '.join(SPENDING)}, got {self.spending!r}")
        object.__setattr__(self, "looks", looks)

    @property
    def cap(self) -> int:
        """The most seeds per backbone the design can ask for."""
        return max(self.max_seeds or 0, self.looks[-1])

    @property
    def pilot(self) -> bool:
        """Whether the first look's sd may raise the maximum."""
        return self.planning_sd is not None and self.cap > (self.first_spent_of or self.looks[-1])

    @property
    def spent(self) -> float:
        """The one-sided α each test spends in all: α, or PILOT_ALPHA_SHARE × α with a pilot."""
        return self.alpha * PILOT_ALPHA_SHARE if self.pilot else self.alpha

    def cumulative_alpha(self) -> np.ndarray:
        fractions = np.asarray(self.looks, dtype=float) / self.looks[-1]
        cumulative = spent_alpha(self.spending, self.spent, fractions)
        if self.first_spent_of is not None:
            cumulative[0] = spent_alpha(self.spending, self.spent, [self.looks[0] / self.first_spent_of])[0]
        return np.maximum.accumulate(cumulative)

    def z_bounds(self) -> np.ndarray:
        return boundaries(self.looks, self.cumulative_alpha())

    def nominal(self) -> np.ndarray:
        """Nominal one-sided level of each look: 1 − Φ(c_k)."""
        return sps.norm.sf(self.z_bounds())

    def after_pilot(self, pilot_sd: float) -> SequentialDesign:
        """The design the first look's pooled sd leaves (itself when no raise is planned or needed)."""
        return self.with_maximum(raised_maximum(self.looks, self.planning_sd, pilot_sd, self.cap))

    def with_maximum(self, raised: int) -> SequentialDesign:
        """The same first look, the later ones spread evenly up to ``raised`` seeds per backbone."""
        if raised == self.looks[-1]:
            return self
        first, k = self.looks[0], len(self.looks)
        later = [first + round((raised - first) * j / (k - 1)) for j in range(1, k)]
        return replace(self, looks=(first, *later), first_spent_of=self.looks[-1])


def raised_maximum(looks: tuple[int, ...], planning_sd: float | None, pilot_sd: float, cap: int) -> int:
    """Seeds per backbone after the pilot: the planned maximum × (pilot sd / planning sd)², rounded up to a
    multiple of the first look, never below the plan, never above ``cap``."""
    return int(raised_maxima(looks, planning_sd, np.array([pilot_sd]), cap)[0])


def raised_maxima(looks: tuple[int, ...], planning_sd: float | None, pilot_sd: np.ndarray, cap: int) -> np.ndarray:
    """raised_maximum for an array of pilot sds."""
    planned = looks[-1]
    if planning_sd is None or cap <= planned:
        return np.full(len(pilot_sd), planned)
    wanted = planned * (np.asarray(pilot_sd, dtype=float) / planning_sd) ** 2
    rounded = np.ceil(wanted / looks[0] - 1e-9) * looks[0]
    return np.clip(np.nan_to_num(rounded, nan=planned), planned, cap).astype(int)


@dataclass
class Look:
    k: int  # 1-based
    n: int  # seeds per backbone
    delta: float  # mean(a) − mean(b), points
    se: float
    df: float
    nominal: float  # one-sided level of this look
    rci_low: float  # repeated confidence interval, level 1 − 2·nominal at this look, simultaneous over looks
    rci_high: float
    equivalent: bool
    futile: bool  # non-binding: |d| ≥ margin from the second look on
    correlation: float  # of the paired outcomes (seed i of a with seed i of b); NaN below 3 seeds
    pooled_sd: float  # within-backbone, for the pilot rule


def look_statistics(a: np.ndarray, b: np.ndarray, paired: bool) -> tuple[float, float, float]:
    """d, its se and df: Welch's (unpaired) or the paired t's (seed i of a with seed i of b)."""
    n_a, n_b = len(a), len(b)
    if paired:
        diff = a - b
        return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(n_a)), n_a - 1.0
    va, vb = a.var(ddof=1) / n_a, b.var(ddof=1) / n_b
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1)) if va + vb > 0 else n_a + n_b - 2.0
    return float(a.mean() - b.mean()), math.sqrt(va + vb), float(df)


def analyse(a: np.ndarray, b: np.ndarray, design: SequentialDesign) -> list[Look]:
    """Every look the seeds reach, in order, up to the first that stops (equivalence or futility).

    ``a`` and ``b`` hold per-seed final mIoU in seed order (seed i of a shares its data order with seed i of
    b); the last Look's RCI and decision are the answer."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    looks, current = [], design
    k = 0
    while k < len(current.looks) and min(len(a), len(b)) >= current.looks[k]:
        n = current.looks[k]
        x, y = a[:n], b[:n]
        delta, se, df = look_statistics(x, y, design.paired)
        nominal = float(current.nominal()[k])
        half = float(sps.t.isf(nominal, df) * se) if se > 0 else 0.0
        low, high = delta - half, delta + half
        equivalent = -design.margin < low and high < design.margin
        futile = design.futility and k > 0 and not equivalent and abs(delta) >= design.margin
        corr = float(np.corrcoef(x, y)[0, 1]) if n >= 3 and x.std() > 0 and y.std() > 0 else float("nan")
        pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
        looks.append(Look(k + 1, n, delta, se, df, nominal, low, high, equivalent, futile, corr, pooled))
        if equivalent or futile:
            break
        if k == 0:
            current = design.after_pilot(pooled)
        k += 1
    return looks


def decision(looks: list[Look], design: SequentialDesign) -> str:
    """What the looks so far say: equivalent, not equivalent (futility or the last look), or how many seeds next."""
    if not looks:
        return f"continue: the first look needs {design.looks[0]} seeds per backbone"
    last, current = looks[-1], design.after_pilot(looks[0].pooled_sd)
    interval = f"RCI {last.rci_low:+.2f}…{last.rci_high:+.2f}"
    if last.equivalent:
        return f"equivalent at look {last.k} ({last.n} seeds per backbone): {interval} inside ±{design.margin:g}"
    if last.futile:
        return f"not equivalent: futility at look {last.k} ({last.n} seeds per backbone), Δ̂ {last.delta:+.2f}"
    if last.k == len(current.looks):
        return f"not equivalent at the last look ({last.n} seeds per backbone): {interval}"
    return f"continue: look {last.k + 1} needs {current.looks[last.k]} seeds per backbone"
