"""Monte Carlo operating characteristics of a sequential design (experiments.sequential), vectorised over replicates.

Per-seed final mIoU is drawn normal: backbone a with mean Δ and sd ``sd_a``, b with mean 0 and sd ``sd_b``; seed i
of a and of b correlated by ``correlation`` (they share data order and augmentation stream). Every replicate
draws the design's cap of seeds once and is analysed at its looks exactly as experiments.sequential.analyse does
(pilot raise, t critical values at each look's df, RCI inside ±margin, non-binding futility obeyed).

`python -m analysis.sequential_sim` prints the figures the tests assert, with their Monte Carlo standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from experiments.sequential import SequentialDesign, raised_maxima

CHUNK = 50_000  # replicates drawn at once: memory stays under ~100 MB at 40 seeds


@dataclass
class Simulated:
    replicates: int
    p_equivalent: float
    expected_seeds: float  # per backbone
    expected_seeds_se: float
    stop_share: dict[int, float]  # seeds per backbone at the stop → share of replicates

    @property
    def p_equivalent_se(self) -> float:
        """Monte Carlo standard error of ``p_equivalent``."""
        p = self.p_equivalent
        return math.sqrt(max(p * (1 - p), 1e-12) / self.replicates)


def _draws(design: SequentialDesign, delta, sd_a, sd_b, correlation, replicates, rng) -> tuple[np.ndarray, ...]:
    n = design.cap
    z_a = rng.standard_normal((replicates, n))
    z_b = correlation * z_a + math.sqrt(1 - correlation**2) * rng.standard_normal((replicates, n))
    return delta + sd_a * z_a, sd_b * z_b


def _sums(design: SequentialDesign, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    cums = [np.cumsum(x, axis=1) for x in (a, b, a * a, b * b)]
    if design.paired:
        d = a - b
        cums += [np.cumsum(d, axis=1), np.cumsum(d * d, axis=1)]
    return tuple(cums)


def _stats(cums: tuple[np.ndarray, ...], rows: np.ndarray, n: int, paired: bool) -> tuple[np.ndarray, ...]:
    """d, se, df and the pooled within-backbone sd of the given replicates at n seeds per backbone."""
    s_a, s_b, q_a, q_b = (c[rows, n - 1] for c in cums[:4])
    var_a = np.maximum(q_a - s_a**2 / n, 0) / (n - 1)
    var_b = np.maximum(q_b - s_b**2 / n, 0) / (n - 1)
    pooled = np.sqrt((var_a + var_b) / 2)
    if paired:
        s_d, q_d = cums[4][rows, n - 1], cums[5][rows, n - 1]
        var_d = np.maximum(q_d - s_d**2 / n, 0) / (n - 1)
        return s_d / n, np.sqrt(var_d / n), np.full(len(rows), n - 1.0), pooled
    va, vb = var_a / n, var_b / n
    df = (va + vb) ** 2 / np.maximum(va**2 / (n - 1) + vb**2 / (n - 1), 1e-300)
    return (s_a - s_b) / n, np.sqrt(va + vb), df, pooled


def _run(design: SequentialDesign, cums, rows: np.ndarray, looks: range, used: np.ndarray, shown: np.ndarray) -> None:
    """Analyse ``rows`` at the look indices ``looks`` up to their stop, writing seeds used and equivalence shown."""
    alive = rows
    nominal = design.nominal()
    for k in looks:
        if not len(alive):
            return
        n = design.looks[k]
        d, se, df, _ = _stats(cums, alive, n, design.paired)
        half = sps.t.isf(nominal[k], df) * se
        equivalent = (d - half > -design.margin) & (d + half < design.margin)
        stop = equivalent | (k == len(design.looks) - 1)
        if design.futility and k > 0:
            stop |= np.abs(d) >= design.margin
        used[alive[stop]] = n
        shown[alive[equivalent]] = True
        alive = alive[~stop]


def simulate(
    design: SequentialDesign,
    delta: float,
    sd_a: float,
    sd_b: float | None = None,
    *,
    correlation: float = 0.0,
    replicates: int = 100_000,
    seed: int = 0,
) -> Simulated:
    """P(equivalence shown), expected seeds per backbone and where the design stops, by simulation."""
    rng = np.random.default_rng(seed)
    sd_b = sd_a if sd_b is None else sd_b
    used = np.concatenate(
        [
            outcomes(design, *_draws(design, delta, sd_a, sd_b, correlation, min(CHUNK, replicates - start), rng))
            for start in range(0, replicates, CHUNK)
        ]
    )
    shown, used = used < 0, np.abs(used)
    values, counts = np.unique(used, return_counts=True)
    return Simulated(
        replicates,
        float(shown.mean()),
        float(used.mean()),
        float(used.std(ddof=1) / math.sqrt(replicates)),
        {int(v): float(c / replicates) for v, c in zip(values, counts, strict=True)},
    )


def outcomes(design: SequentialDesign, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Seeds per backbone at each row's stop, negative where it stopped showing equivalence.

    ``a`` and ``b``: (replicates, design.cap) per-seed values in seed order; experiments.sequential.analyse on a row
    makes the same decision (tested)."""
    cums = _sums(design, np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    replicates = len(cums[0])
    used, shown = np.zeros(replicates, dtype=int), np.zeros(replicates, dtype=bool)
    everyone = np.arange(replicates)
    _run(design, cums, everyone, range(1), used, shown)  # the pilot look, with the planned boundaries
    rest = everyone[used == 0]
    if len(design.looks) > 1 and len(rest):
        _, _, _, pooled = _stats(cums, rest, design.looks[0], design.paired)
        raised = raised_maxima(design.looks, design.planning_sd, pooled, design.cap)
        for maximum in np.unique(raised):
            after = design.with_maximum(int(maximum))
            _run(after, cums, rest[raised == maximum], range(1, len(after.looks)), used, shown)
    return np.where(shown, -used, used)


LOOKS = (4, 8, 12, 16)
DESIGNS = {  # the reference's designs (/work/shared/reference/study-design.md), then the shipped study's
    "fixed, 16": SequentialDesign((16,), 0.5),
    "O'Brien-Fleming": SequentialDesign(LOOKS, 0.5),
    "Pocock": SequentialDesign(LOOKS, 0.5, spending="pocock"),
    "O'Brien-Fleming + futility": SequentialDesign(LOOKS, 0.5, futility=True),
    "O'Brien-Fleming + futility + pilot (sd 0.46, cap 40)": SequentialDesign(
        LOOKS, 0.5, futility=True, max_seeds=40, planning_sd=0.46
    ),
}


def figures(replicates: int = 200_000) -> list[str]:
    """The operating characteristics the tests check, as text lines (sd 0.46, margin 0.5, α = 0.05 per side)."""
    from experiments.sequential import boundaries, spent_alpha

    t = np.arange(1, 5) / 4
    obf = boundaries((1, 2, 3, 4), spent_alpha("obrien-fleming", 0.025, t))
    lines = [
        "Lan-DeMets O'Brien-Fleming, 4 equal looks, one-sided 0.025: z = " + ", ".join(f"{z:.3f}" for z in obf),
        f"{replicates:,} replicates per figure; ± one Monte Carlo standard error",
        "",
        "| design | nominal p per look | P(equiv.) Δ = +0.5 | Δ = −0.5, sds 0.3/0.6 | power Δ = 0 "
        "| E[seeds] Δ = 0 / 0.25 / 0.5 / 0.75 / 1.0 |",
        "|---|---|---|---|---|---|",
    ]
    for name, design in DESIGNS.items():
        at = simulate(design, 0.5, 0.46, replicates=replicates, seed=1)
        unequal = simulate(design, -0.5, 0.3, 0.6, replicates=replicates, seed=2)
        power = simulate(design, 0.0, 0.46, replicates=replicates, seed=3)
        seeds = [simulate(design, d, 0.46, replicates=replicates // 4, seed=4) for d in (0, 0.25, 0.5, 0.75, 1.0)]
        nominal = ", ".join(f"{p:.4f}" for p in design.nominal())
        expected = " / ".join(f"{s.expected_seeds:.2f}" for s in seeds)
        worst = max(s.expected_seeds_se for s in seeds)
        lines.append(f"| {name} | {nominal} | {_p(at)} | {_p(unequal)} | {_p(power)} | {expected} (± ≤ {worst:.2f}) |")
    pilot = DESIGNS["O'Brien-Fleming + futility + pilot (sd 0.46, cap 40)"]
    lines += ["", "pilot rule (cap 40, planned sd 0.46): P(equivalence) at Δ = +0.5 by true sds of res50/res101"]
    for sds in ((0.2, 0.2), (0.46, 0.46), (0.55, 0.55), (0.7, 0.7), (1.0, 1.0), (0.3, 0.6), (0.2, 0.8)):
        at = simulate(dataclasses.replace(pilot, futility=False), 0.5, *sds, replicates=replicates, seed=5)
        lines.append(f"  sd {sds[0]:g}/{sds[1]:g}: {_p(at)}, E[seeds] {at.expected_seeds:.2f}")
    return lines


def _p(sim: Simulated) -> str:
    return f"{sim.p_equivalent:.4f} ± {sim.p_equivalent_se:.4f}"


if __name__ == "__main__":
    print("\n".join(figures()))
