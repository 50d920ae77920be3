"""Matched res50/res101 pairs in the published table, Δ = res101 − res50, and a pooled estimate.

A pair is two rows that agree on source, method, output stride, crop, schedule, batch, GPUs, evaluation and
pretrained weights and differ only in the backbone. The table has no weights column: mmsegmentation's
``R-50b``/``R-101b`` rows (named so in the note) use torchvision's ImageNet weights, every other row its
source's default. Each Δ gets a 95% interval from a stated run-to-run sd of one training run (two independent
runs: sd·√2). Only single-scale pairs of final models of DeepLabV3+ are pooled: a multi-scale row evaluates the
same models again, and a best-of-N or unstated protocol is not like for like.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

MATCH = ["source", "method", "output_stride", "crop", "iterations", "batch_total", "gpus", "eval", "weights"]
Z95 = 1.959963984540054


def weights_of(note: object) -> str:
    """Pretrained weights of a published row, read from its note (see the module docstring)."""
    return "torchvision ImageNet" if re.match(r"R-\d+b\b", str(note)) else "source default"


def _why_not_pooled(row: pd.Series) -> str:
    if row["method"] != "DeepLabV3+":
        return f"{row['method']}, not DeepLabV3+"
    if row["eval"] != "single-scale":
        return "multi-scale: the single-scale pair's models evaluated again"
    if row["selection_r50"] != "final" or row["selection_r101"] != "final":
        return f"protocols differ or unknown: res50 {row['selection_r50']}, res101 {row['selection_r101']}"
    return ""


def matched_pairs(published: pd.DataFrame, run_sd: float) -> pd.DataFrame:
    """One row per matched pair: the match columns, both mIoUs and protocols, Δ with its 95% interval, pooled."""
    frame = published.assign(weights=published["note"].map(weights_of))
    frame = frame[frame.backbone.isin(["resnet50", "resnet101"])]
    rows = []
    for values, group in frame.groupby(MATCH, dropna=False, sort=False):
        by = {b: g for b, g in group.groupby("backbone")}
        if set(by) != {"resnet50", "resnet101"} or len(by["resnet50"]) != 1 or len(by["resnet101"]) != 1:
            continue
        r50, r101 = by["resnet50"].iloc[0], by["resnet101"].iloc[0]
        row = dict(zip(MATCH, values, strict=True))
        row |= {"miou_r50": r50.miou, "miou_r101": r101.miou, "delta": r101.miou - r50.miou}
        row |= {"selection_r50": r50.selection, "selection_r101": r101.selection}
        rows.append(row)
    pairs = pd.DataFrame(rows)
    half = Z95 * math.sqrt(2) * run_sd
    pairs["ci_low"], pairs["ci_high"] = pairs.delta - half, pairs.delta + half
    pairs["not_pooled"] = pairs.apply(_why_not_pooled, axis=1)
    pairs["pooled"] = pairs.not_pooled == ""
    return pairs


@dataclass
class Pooled:
    k: int
    run_sd: float
    fixed: float  # inverse-variance mean (all pairs have the same stated variance: the plain mean)
    fixed_ci: tuple[float, float]
    random: float  # random effects, between-pair variance tau² by Paule-Mandel (0 when Q < k − 1)
    random_ci: tuple[float, float]
    tau2: float
    q: float  # Cochran's Q under the stated sd
    q_p: float  # its p-value (df = k − 1)
    i2: float
    scatter_ci: tuple[float, float]  # Hartung-Knapp (t, k − 1 df): the pairs' own scatter, not the stated sd


def pool_pairs(pairs: pd.DataFrame, run_sd: float) -> Pooled:
    """Fixed-effect and random-effects pooling of the pooled pairs' Δ (statsmodels' combine_effects)."""
    from scipy import stats as sps
    from statsmodels.stats.meta_analysis import combine_effects

    chosen = pairs[pairs.pooled]
    k = len(chosen)
    variance = np.full(k, 2 * run_sd**2)
    result = combine_effects(chosen.delta.to_numpy(), variance, method_re="pm")
    fixed_ci, random_ci, _, _ = result.conf_int()
    scatter_ci = result.conf_int(use_t=True)[3]
    return Pooled(
        k,
        run_sd,
        float(result.mean_effect_fe),
        (float(fixed_ci[0]), float(fixed_ci[1])),
        float(result.mean_effect_re),
        (float(random_ci[0]), float(random_ci[1])),
        float(result.tau2),
        float(result.q),
        float(sps.chi2.sf(result.q, k - 1)),
        max(0.0, float(result.i2)),
        (float(scatter_ci[0]), float(scatter_ci[1])),
    )
