"""Figures (PNG + SVG) of the comparison; each function takes frames and returns the files it wrote."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sps

COLOURS = {"resnet50": "tab:blue", "resnet101": "tab:orange"}


def save_figure(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _band(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return float("nan"), float("nan")
    half = sps.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return values.mean() - half, values.mean() + half


def curves_figure(runs: pd.DataFrame, curves: pd.DataFrame, out: Path, metric: str = "val/mIoU") -> list[Path]:
    """val mIoU vs iteration per backbone: mean ± 95% CI over seeds, one panel per schedule length."""
    data = curves[curves.metric == metric].merge(runs[["run_id", "backbone", "iterations", "seed"]], on="run_id")
    schedules = sorted(runs.iterations.dropna().unique())
    fig, axes = plt.subplots(1, len(schedules), figsize=(4.2 * len(schedules), 3.4), squeeze=False, sharey=True)
    for ax, schedule in zip(axes[0], schedules, strict=True):
        for backbone, group in data[data.iterations == schedule].groupby("backbone"):
            stats = group.groupby("step")["value"].agg(lambda v: tuple(v.to_numpy()))
            steps = stats.index.to_numpy()
            mean = np.array([np.mean(v) for v in stats])
            bands = np.array([_band(np.array(v)) for v in stats])
            ax.plot(steps, mean, label=f"{backbone} (n={group.seed.nunique()})", color=COLOURS.get(backbone))
            ax.fill_between(steps, bands[:, 0], bands[:, 1], alpha=0.25, color=COLOURS.get(backbone))
        ax.set_title(f"{int(schedule)} iterations")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("val mIoU (%)")
    axes[0][-1].legend(loc="lower right")
    return save_figure(fig, out, "curves")


def final_vs_schedule_figure(summary: pd.DataFrame, published: pd.DataFrame, out: Path) -> list[Path]:
    """Final mIoU (mean ± 95% CI over seeds) vs schedule length, with the published single-scale points."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for backbone, group in summary.groupby("backbone"):
        group = group.sort_values("iterations")
        err = np.vstack([group["mean"] - group.ci_low, group.ci_high - group["mean"]])
        ax.errorbar(
            group.iterations,
            group["mean"],
            yerr=np.nan_to_num(err),
            marker="o",
            capsize=3,
            label=f"ours {backbone}",
            color=COLOURS.get(backbone),
        )
    markers = {"seed README (CoinCheung)": "*", "seed README outreach": "P", "mmsegmentation": "s"}
    for _, row in published.dropna(subset=["iterations"]).iterrows():
        ax.scatter(
            row.iterations,
            row.miou,
            marker=markers.get(row.source, "X"),
            color=COLOURS.get(row.backbone),
            edgecolor="black",
            s=60,
            zorder=3,
        )
    shown = set(published.dropna(subset=["iterations"]).source)
    for source, marker in markers.items():
        if source in shown:
            ax.scatter([], [], marker=marker, color="grey", edgecolor="black", label=f"published: {source}")
    if shown - set(markers):
        ax.scatter([], [], marker="X", color="grey", edgecolor="black", label="published: other")
    ax.set_xscale("log")  # a CPU demo's tens of iterations and the published tens of thousands on one axis
    ax.set_xlabel("training iterations (log scale)")
    ax.set_ylabel("val mIoU (%) single scale")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, out, "final_vs_schedule")


def per_class_delta_figure(per_class: pd.DataFrame, runs: pd.DataFrame, out: Path) -> list[Path]:
    """Per-class Δ IoU (res50 − res101), mean over seeds, at the longest schedule."""
    longest = runs.iterations.max()
    data = per_class.merge(runs[["run_id", "backbone", "iterations"]], on="run_id")
    data = data[data.iterations == longest]
    table = data.groupby(["class", "backbone"])["iou"].mean().unstack()
    fig, ax = plt.subplots(figsize=(7, 4))
    if {"resnet50", "resnet101"} <= set(table.columns):
        delta = (table["resnet50"] - table["resnet101"]).sort_values()
        ax.barh(delta.index, delta.to_numpy(), color=np.where(delta.to_numpy() >= 0, "tab:blue", "tab:orange"))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"Δ IoU res50 − res101 (points), {int(longest)} iterations")
    return save_figure(fig, out, "per_class_delta")


def cost_figure(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Final mIoU vs compute (GPU-hours, or device-hours on CPU) and the backbones' parameters and FLOPs."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    hours = "gpu_hours" if runs.gpu_hours.notna().any() else "device_hours"
    for backbone, group in runs.dropna(subset=["miou"]).groupby("backbone"):
        ax1.scatter(group[hours], group.miou, label=backbone, color=COLOURS.get(backbone))
    ax1.set_xlabel(hours.replace("_", "-"))
    ax1.set_ylabel("val mIoU (%)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    cost = runs.groupby("backbone")[["params", "gflops"]].first().dropna()
    if not cost.empty:
        x = np.arange(len(cost))
        ax2.bar(x - 0.2, cost.params / 1e6, 0.4, label="parameters (M)")
        ax2.bar(x + 0.2, cost.gflops, 0.4, label="GFLOPs / forward at the crop")
        ax2.set_xticks(x, cost.index)
        ax2.legend(fontsize=8)
    return save_figure(fig, out, "cost")
