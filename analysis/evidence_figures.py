"""Figures of the evidence report: the fork's validation curves, its loss curves, the published pairs' forest plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.cells import DELTA_NAME
from analysis.figures import save_figure
from analysis.pairs import Pooled
from analysis.selection import SelectionBias

LOG_COLOURS = ["tab:blue", "tab:cyan"]
MARKERS = {"final": "D", "unknown": "s"}


def fork_curves_figure(
    validations: pd.DataFrame, biases: dict[str, SelectionBias], res101: pd.DataFrame, out: Path, k: int = 10
) -> list[Path]:
    """Both fork logs' val mIoU curves (whole, and the plateau with its trend, final, mean of last k, best)
    beside the published res101 points of the same recipe."""
    fig, (whole, late) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    for colour, (name, group) in zip(LOG_COLOURS, validations.groupby("log", sort=False), strict=False):
        it, y = group.iteration.to_numpy(), 100 * group.miou.to_numpy()
        bias = biases[name]
        whole.plot(it, y, color=colour, lw=1, label=f"res50 {name}")
        late.plot(it, y, color=colour, lw=0.8, marker=".", ms=3, label=f"res50 {name}")
        late.plot(bias.noise.iterations, bias.noise.trend, color=colour, lw=2, alpha=0.5, ls="--")
        late.scatter(it[-1], y[-1], marker="o", s=60, color=colour, edgecolor="black", zorder=4)
        late.scatter(bias.best_iteration, bias.best, marker="*", s=160, color=colour, edgecolor="black", zorder=4)
        late.hlines(y[-k:].mean(), it[-k], it[-1], color=colour, lw=3, alpha=0.8)
        late.annotate(
            f"best {bias.best:.2f}",
            (bias.best_iteration, bias.best),
            textcoords="offset points",
            xytext=(-62, 4),
            fontsize=8,
        )
        late.annotate(f"final {y[-1]:.2f}", (it[-1], y[-1]), textcoords="offset points", xytext=(6, -12), fontsize=8)
    for _, row in res101.iterrows():
        for ax in (whole, late):
            ax.scatter(
                row.iterations,
                row.miou,
                marker=MARKERS.get(row.selection, "X"),
                s=70,
                color="tab:orange",
                edgecolor="black",
                zorder=5,
            )
        late.annotate(
            f"res101 {row.miou:.2f} ({row.selection})",
            (row.iterations, row.miou),
            textcoords="offset points",
            xytext=(-60, 14),
            fontsize=8,
            color="tab:orange",
        )
    start = min(b.noise.start for b in biases.values())
    late.set_xlim(start - 1000, max(validations.iteration.max(), res101.iterations.max()) + 3000)
    late.set_ylim(70, 80)
    whole.set_ylim(40, 82)
    for ax, title in ((whole, "every validation on val"), (late, "the plateau (last quarter of each schedule)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    whole.set_ylabel("val mIoU (%) single scale")
    handles = [
        plt.Line2D([], [], color="grey", marker="o", ls="", label="final (last validation)"),
        plt.Line2D([], [], color="grey", marker="*", ms=12, ls="", label="best (the seed's reported number)"),
        plt.Line2D([], [], color="grey", lw=3, label=f"mean of the last {k}"),
        plt.Line2D([], [], color="grey", ls="--", label="robust trend (plateau fit)"),
        plt.Line2D([], [], color="tab:orange", marker="D", ls="", label="published res101, final model"),
        plt.Line2D([], [], color="tab:orange", marker="s", ls="", label="published res101, protocol unknown"),
    ]
    late.legend(handles=[*late.get_legend_handles_labels()[0][:2], *handles], fontsize=7, loc="lower right")
    return save_figure(fig, out, "fork_curves")


def fork_loss_figure(progress: pd.DataFrame, out: Path) -> list[Path]:
    """Training loss of both fork logs (every progress line)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for colour, (name, group) in zip(LOG_COLOURS, progress.groupby("log", sort=False), strict=False):
        ax.plot(group.iteration, group.loss, color=colour, lw=0.8, label=f"res50 {name}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("train loss (OHEM CE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out, "fork_loss")


def forest_figure(pairs: pd.DataFrame, pooled: Pooled, margin: float, out: Path) -> list[Path]:
    """Δ = res101 − res50 (analysis.cells.DELTA_NAME) per matched published pair with its interval, and the pooled
    estimates; which side of 0 favours which backbone is written on the axis."""
    labels = [
        f"{r.source} {r.method} {r.crop} {'' if pd.isna(r.iterations) else f'{int(r.iterations) // 1000}k '}"
        f"{r.eval}{' (torchvision weights)' if r.weights.startswith('torchvision') else ''}"
        for r in pairs.itertuples()
    ]
    summary = [
        ("pooled: fixed effect", pooled.fixed, pooled.fixed_ci),
        ("pooled: random effects (Paule-Mandel)", pooled.random, pooled.random_ci),
        ("pooled: pairs' own scatter (Hartung-Knapp)", pooled.fixed, pooled.scatter_ci),
    ]
    n = len(pairs) + len(summary)
    fig, ax = plt.subplots(figsize=(8.5, 0.32 * n + 1.4))
    ax.axvspan(-margin, margin, color="tab:green", alpha=0.08, label=f"±{margin:g} (the study's margin)")
    ax.axvline(0, color="black", lw=0.8)
    y = np.arange(n)[::-1]
    for yi, r in zip(y, pairs.itertuples(), strict=False):
        colour = "black" if r.pooled else "grey"
        ax.errorbar(
            r.delta,
            yi,
            xerr=[[r.delta - r.ci_low], [r.ci_high - r.delta]],
            fmt="s",
            color=colour,
            mfc=colour if r.pooled else "white",
            capsize=2,
            ms=5,
        )
    for yi, (_, est, (low, high)) in zip(y[len(pairs) :], summary, strict=True):
        ax.fill([low, est, high, est], [yi, yi + 0.3, yi, yi - 0.3], color="tab:red", alpha=0.7)
    ax.set_yticks(y, labels + [s[0] for s in summary], fontsize=7)
    ax.set_xlabel(
        f"Δ = {DELTA_NAME} [mIoU points]: ← res50 ahead | res101 ahead →; "
        f"95% intervals at run-to-run sd {pooled.run_sd:.2f}"
    )
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("matched published pairs (filled: pooled; open: shown, not pooled)", fontsize=9)
    return save_figure(fig, out, "forest")
