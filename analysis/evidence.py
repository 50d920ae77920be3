"""`analysis evidence`: what public evidence says about res50 vs res101, without a sweep.

Three lines of evidence: the seed fork's own validation curves (package data), the best-of-N selection bias
they imply, and the matched res50/res101 pairs of the published table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.cells import DELTA_NAME
from analysis.fork_logs import fork_meta, fork_validations
from analysis.pairs import Pooled, matched_pairs, pool_pairs
from analysis.published import published_frame
from analysis.selection import SelectionBias, selection_bias

SEED_URLS = ("github.com/CoinCheung/DeepLab-v3-plus-cityscapes", "github.com/konami86/DeepLab-v3-plus-cityscapes-Res50")
Z95 = 1.959963984540054
Z90 = 1.6448536269514722


def seed_family(published: pd.DataFrame) -> pd.DataFrame:
    """Single-scale rows of the seed recipe (the seed repository and its res50 fork, 768² crops, OS 16)."""
    keep = published.url.str.contains("|".join(SEED_URLS), regex=True) & (published["eval"] == "single-scale")
    keep &= (published.method == "DeepLabV3+") & (published.crop == "768x768") & (published.output_stride == 16)
    return published[keep].reset_index(drop=True)


def fork_biases(validations: pd.DataFrame | None = None) -> dict[str, SelectionBias]:
    """Final vs best and the best-of-N inflation of each fork log (points)."""
    validations = fork_validations() if validations is None else validations
    max_iter = {log["file"]: log["max_iter"] for log in fork_meta()["logs"]}
    return {
        name: selection_bias(group.iteration.to_numpy(), 100 * group.miou.to_numpy(), max_iter[name])
        for name, group in validations.groupby("log", sort=False)
    }


def evidence_run_sd(biases: dict[str, SelectionBias] | None = None) -> float:
    """Run-to-run sd assumed from the evidence: the fork plateaus' validation noise, pooled (root mean square)."""
    biases = fork_biases() if biases is None else biases
    return math.sqrt(sum(b.noise.sigma**2 for b in biases.values()) / len(biases))


def protocol_comparisons(family: pd.DataFrame, biases: dict[str, SelectionBias], run_sd: float) -> pd.DataFrame:
    """Every res50 × res101 number of the seed recipe, side by side with the protocol of each side."""
    rows = []
    r50, r101 = family[family.backbone == "resnet50"], family[family.backbone == "resnet101"]
    corrected = [
        (
            f"{row.source} less the expected inflation",
            row.iterations,
            row.miou - biases[log].inflation,
            "best corrected",
        )
        for row in r50.itertuples()
        for log, bias in biases.items()
        if row.selection.startswith("best-of") and abs(row.miou - bias.best) < 0.01
    ]
    sides = [(r.source, r.iterations, r.miou, r.selection) for r in r50.itertuples()] + corrected
    for source, iterations, miou, selection in sides:
        for b in r101.itertuples():
            like = selection == b.selection == "final"
            rows.append(
                {
                    "res50": f"{miou:.2f} ({selection}, {int(iterations)} it., {source})",
                    "res101": f"{b.miou:.2f} ({b.selection}, {int(b.iterations)} it., {b.source})",
                    "delta": b.miou - miou,
                    "ci_low": b.miou - miou - Z95 * math.sqrt(2) * run_sd,
                    "ci_high": b.miou - miou + Z95 * math.sqrt(2) * run_sd,
                    "like_for_like": "yes: final vs final" if like else f"no: {selection} vs {b.selection}",
                    "r50_selection": selection,
                    "r101_selection": b.selection,
                    "r50_iterations": iterations,
                    "r101_iterations": b.iterations,
                    "r50_miou": miou,
                    "r101_miou": b.miou,
                }
            )
    return pd.DataFrame(rows)


@dataclass
class Evidence:
    validations: pd.DataFrame
    biases: dict[str, SelectionBias]
    run_sd: float
    run_sd_source: str
    family: pd.DataFrame
    comparisons: pd.DataFrame
    pairs: pd.DataFrame
    pooled: Pooled
    published: pd.DataFrame


def gather_evidence(run_sd: float | None = None) -> Evidence:
    """Everything the evidence report says, computed from the package data."""
    validations = fork_validations()
    biases = fork_biases(validations)
    source = "--run-sd" if run_sd is not None else "the fork plateaus' validation noise (pooled)"
    run_sd = evidence_run_sd(biases) if run_sd is None else run_sd
    published = published_frame()
    family = seed_family(published)
    comparisons = protocol_comparisons(family, biases, run_sd)
    pairs = matched_pairs(published, run_sd)
    return Evidence(
        validations, biases, run_sd, source, family, comparisons, pairs, pool_pairs(pairs, run_sd), published
    )


def _gaps(deltas: list[float]) -> str:
    """ "0.73 and 0.69 points below" (res101 − res50 > 0: res50 below)."""
    if all(d > 0 for d in deltas) or all(d < 0 for d in deltas):
        return " and ".join(f"{abs(d):.2f}" for d in deltas) + f" points {'below' if deltas[0] > 0 else 'above'}"
    return " and ".join(f"{abs(d):.2f} points {'below' if d > 0 else 'above'}" for d in deltas)


def verdict_sentences(ev: Evidence, margin: float) -> list[str]:
    """The verdict in sentences a reader can quote, the conclusion first; each says which protocol each side used."""
    c, p = ev.comparisons, ev.pooled
    seed = c[c.r50_selection.str.startswith("best-of") & (c.r101_selection == "final")].iloc[0]
    picked = next((b for b in ev.biases.values() if abs(b.best - seed.r50_miou) < 0.01), None)
    where = f"after iteration {picked.best_iteration} of {int(seed.r50_iterations)}" if picked else "the best"
    finals = c[(c.r50_selection == "final") & (c.r101_selection == "final")]
    half = Z95 * math.sqrt(2) * ev.run_sd
    lines = [
        _conclusion(ev, seed.delta, margin),
        f"The seed's near-tie compares res50's {seed.r50_selection} (the best of all validations, picked on the "
        f"val set it is reported on: {seed.r50_miou:.2f} {where}) with res101's final model "
        f"({seed.r101_miou:.2f} after {int(seed.r101_iterations)} iterations): "
        f"Δ = {DELTA_NAME} = {seed.delta:+.2f} points.",
        "Measured the same way, final model against final model, res50 scores "
        + " and ".join(f"{r.r50_miou:.2f} after {int(r.r50_iterations)} iterations" for r in finals.itertuples())
        + " (the last validation of each fork log), "
        + _gaps(list(finals.delta))
        + f" res101's {finals.r101_miou.iloc[0]:.2f} after {int(finals.r101_iterations.iloc[0])}; with one run "
        f"per side each gap's 95% interval is ±{half:.2f} points (run-to-run sd {ev.run_sd:.2f} assumed).",
    ]
    parts = [
        f"best − final {b.best - b.final:+.2f} observed, {b.inflation:+.2f} expected from the last {b.noise.n} "
        f"validations (plateau sd {b.noise.sigma:.2f}) in {name}"
        for name, b in ev.biases.items()
    ]
    lines.append(
        "Picking the best validation inflates a number by about "
        f"{min(b.inflation for b in ev.biases.values()):.1f}–{max(b.inflation for b in ev.biases.values()):.1f} "
        "points over what a final model scores: " + "; ".join(parts) + "."
    )
    ahead = int((ev.pairs[ev.pairs.pooled].delta < 0).sum())
    lines.append(
        f"Across the {p.k} matched published pairs of final DeepLabV3+ models (single scale), Δ = {DELTA_NAME} = "
        f"{p.fixed:+.2f} points (95% CI {p.fixed_ci[0]:+.2f}…{p.fixed_ci[1]:+.2f} at run-to-run sd {ev.run_sd:.2f}; "
        f"{p.scatter_ci[0]:+.2f}…{p.scatter_ci[1]:+.2f} from the pairs' own scatter; random effects "
        f"{p.random:+.2f}, τ² = {p.tau2:.2f}); res50 is ahead in {ahead} of {p.k}."
    )
    return lines


def _conclusion(ev: Evidence, seed_delta: float, margin: float) -> str:
    p = ev.pooled
    inflations = [b.inflation for b in ev.biases.values()]
    low = min(p.fixed_ci[0], p.scatter_ci[0])
    if low > 0:
        answer = f"res101 leads by about {p.fixed:.1f} points under matched protocols"
    else:
        answer = "a res101 lead under matched protocols cannot be told apart from noise"
    se = (p.fixed_ci[1] - p.fixed_ci[0]) / (2 * Z95)
    ci90 = (p.fixed - Z90 * se, p.fixed + Z90 * se)
    shown = -margin < ci90[0] and ci90[1] < margin
    return (
        f"As far as public evidence goes, {answer}, and the seed's {seed_delta:+.2f} is what comparing a best-of-N "
        f"pick on val with a final model produces (a {p.fixed:+.2f} gap less a "
        f"{min(inflations):.2f}–{max(inflations):.2f} inflation); equivalence within ±{margin:g} is "
        f"{'shown' if shown else 'not shown'} (pooled 90% CI {ci90[0]:+.2f}…{ci90[1]:+.2f}); settling it takes "
        "the study's own seeds (`python -m analysis plan SPEC`)."
    )
