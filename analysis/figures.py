"""Figures (PNG + SVG) of the comparison; each function takes frames and returns the files it wrote.

Every mIoU axis is in points (0–100); intervals never leave the possible range, and with fewer than 3 seeds
the seeds themselves are drawn instead of a t-band; legends sit outside the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.cells import StudyAxes, cell_label, iter_cells
from analysis.gap import MIN_BAND_SEEDS
from analysis.stats import seed_summary

if TYPE_CHECKING:  # analysis.looks reads specs and the store: the evidence's figures need neither
    from analysis.looks import CellLooks

COLOURS = {"resnet50": "tab:blue", "resnet101": "tab:orange"}
MIOU = "val mIoU [points]"


def save_figure(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """PNG and SVG; the SVG keeps its text as text (searchable, and the tests read the axis labels)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for path in paths:
            fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _band(values: np.ndarray) -> tuple[float, float]:
    """95% t-interval of the mean, clipped to 0–100 points."""
    n = len(values)
    half = sps.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return max(values.mean() - half, 0.0), min(values.mean() + half, 100.0)


def _panels(n: int, width: float = 4.2, height: float = 3.4) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=True)
    return fig, list(axes[0])


def _legend_below(fig: plt.Figure, ax: plt.Axes, ncol: int = 4) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=8)


def curves_figure(
    runs: pd.DataFrame, curves: pd.DataFrame, out: Path, axes: StudyAxes, metric: str = "val/mIoU"
) -> list[Path]:
    """val mIoU vs iteration per backbone and cell: the mean with a 95% band (n ≥ 3) or each seed (n < 3)."""
    data = curves[curves.metric == metric]
    cells = list(iter_cells(runs, axes))
    fig, panels = _panels(max(len(cells), 1))
    for ax, (key, *sides) in zip(panels, cells, strict=False):
        for side in sides:
            backbone, colour = side.backbone.iloc[0], COLOURS.get(side.backbone.iloc[0])
            wide = data[data.run_id.isin(side.run_id)].pivot_table(index="step", columns="run_id", values="value")
            n = wide.shape[1]
            ax.plot(wide.index, wide.mean(axis=1), color=colour, lw=2, label=f"{backbone} mean (n={n})")
            if n >= MIN_BAND_SEEDS:
                bands = np.array([_band(row.dropna().to_numpy()) for _, row in wide.iterrows()])
                ax.fill_between(wide.index, bands[:, 0], bands[:, 1], alpha=0.25, color=colour, label="95% CI")
            else:
                ax.plot(wide.index, wide.to_numpy(), color=colour, lw=0.8, alpha=0.5, ls="--")
        ax.set_title(cell_label(axes, key), fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    panels[0].set_ylabel(MIOU)
    _legend_below(fig, panels[0])
    return save_figure(fig, out, "curves")


def delta_curves_figure(deltas: pd.DataFrame, out: Path, axes: StudyAxes, margin: float) -> list[Path]:
    """Δ mIoU (a − b) along the iterations of each cell: mean with its Welch band, or every seed difference."""
    cells = list(dict.fromkeys(deltas.cell))
    fig, panels = _panels(max(len(cells), 1))
    for ax, cell in zip(panels, cells, strict=False):
        d = deltas[deltas.cell == cell]
        ax.axhspan(-margin, margin, color="grey", alpha=0.15, label=f"±{margin:g} margin")
        ax.axhline(0, color="black", lw=0.8)
        ax.plot(d.step, d.delta, color="tab:purple", lw=2, marker="o", ms=3, label="Δ of the seed means")
        banded = d.dropna(subset=["low"])
        if len(banded):
            ax.fill_between(banded.step, banded.low, banded.high, color="tab:purple", alpha=0.25, label="Welch 95% CI")
        thin = d[d.low.isna()]
        if len(thin):
            xs = np.concatenate([[s] * len(p) for s, p in zip(thin.step, thin.pairs, strict=True)])
            ys = np.concatenate([list(p) for p in thin.pairs])
            ax.scatter(xs, ys, s=10, color="tab:purple", alpha=0.5, label="seed differences (n<3)")
        ax.set_title(cell, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    panels[0].set_ylabel(f"Δ = {axes.delta_name} [val mIoU points]")
    _legend_below(fig, panels[0])
    return save_figure(fig, out, "delta_curves")


def final_vs_schedule_figure(runs: pd.DataFrame, published: pd.DataFrame, out: Path, axes: StudyAxes) -> list[Path]:
    """Final mIoU vs schedule length: the mean with a 95% CI (n ≥ 3) or each seed, with the published points; runs
    on synthetic data never share an axis with published (Cityscapes) numbers: those are left out then."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    synthetic = bool(runs.synthetic.any()) if "synthetic" in runs else False
    others = axes.cell_keys[1:]
    summary = seed_summary(runs, by=["backbone", *axes.cell_columns])
    for (backbone, *values), group in summary.groupby(["backbone", *axes.cell_columns[1:]], dropna=False):
        group = group.sort_values("iterations")
        label = " ".join(["ours", backbone, axes.label(dict(zip(others, values, strict=True)))]).rstrip()
        colour = COLOURS.get(backbone)
        ax.plot(group.iterations, group["mean"], marker="o", color=colour, label=f"{label} (mean)")
        ok = group.n >= MIN_BAND_SEEDS
        err = np.vstack([group["mean"] - group.ci_low, group.ci_high - group["mean"]])[:, ok.to_numpy()]
        ax.errorbar(group.iterations[ok], group["mean"][ok], yerr=err, fmt="none", capsize=3, color=colour)
        mask = runs.backbone == backbone
        for col, v in zip(axes.cell_columns[1:], values, strict=True):
            mask &= runs[col] == v
        few = runs[mask & runs.iterations.isin(group.iterations[~ok])]
        if len(few):  # each seed where n < 3: no t-interval
            ax.scatter(few.iterations, few.miou, s=18, color=colour, alpha=0.7, marker="x", label=f"{label} (seeds)")
    markers = {"seed README (CoinCheung)": "*", "seed fork README (konami86)": "P", "mmsegmentation": "s"}
    dated = published.dropna(subset=["iterations"])
    if synthetic:
        dated = dated.iloc[:0]
        ax.set_title("synthetic data: the published Cityscapes numbers are not drawn beside it", fontsize=9)
    for _, row in dated.iterrows():
        marker = markers.get(row.source, "X")
        ax.scatter(row.iterations, row.miou, marker=marker, color=COLOURS.get(row.backbone), edgecolor="black", s=60)
    for source in dict.fromkeys(dated.source):
        marker = markers.get(source, "X")
        ax.scatter([], [], marker=marker, color="grey", edgecolor="black", label=f"published: {source}")
    ax.set_xscale("log")  # schedules double: 10k, 20k, 40k, 80k
    ax.set_xlabel("training iterations (log scale)")
    ax.set_ylabel(f"final {MIOU}, single scale")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, out, "final_vs_schedule")


def per_class_delta_figure(per_class: pd.DataFrame, runs: pd.DataFrame, out: Path, axes: StudyAxes) -> list[Path]:
    """Per-class Δ IoU (a − b), mean over seeds, in each cell of the longest schedule; classes both score 0
    on are marked as such, not drawn as ties."""
    longest = runs.iterations.max()
    cells = [cell for cell in iter_cells(runs, axes) if cell.key.iterations == longest]
    fig, panels = _panels(max(len(cells), 1), width=5.5, height=5.5)
    for ax, (key, a, b) in zip(panels, cells, strict=False):
        mean_a = per_class[per_class.run_id.isin(a.run_id)].groupby("class").iou.mean()
        mean_b = per_class[per_class.run_id.isin(b.run_id)].groupby("class").iou.mean()
        table = pd.DataFrame({"a": mean_a, "b": mean_b}).dropna()
        both_zero = (table.a == 0) & (table.b == 0)
        delta = (table.a - table.b).sort_values()
        y = np.arange(len(delta))
        ahead = np.where(delta.to_numpy() >= 0, COLOURS.get(axes.a, "tab:orange"), COLOURS.get(axes.b, "tab:blue"))
        ax.barh(y, delta.to_numpy(), color=ahead)  # each bar in the colour of the backbone it favours
        for i, name in enumerate(delta.index):
            if both_zero[name]:
                ax.barh(i, 1, left=-0.5, color="none", edgecolor="grey", hatch="///", lw=0)
                ax.annotate("both 0", (0, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(y, delta.index, fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(cell_label(axes, key), fontsize=9)
        ax.set_xlabel(f"Δ = {axes.delta_name} [IoU points]")
    return save_figure(fig, out, "per_class_delta")


def cost_figure(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Final mIoU vs compute, and parameters and FLOPs each on its own axis."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [2, 1, 1]})
    hours = "gpu_hours" if runs.gpu_hours.notna().any() else "device_hours"
    for backbone, group in runs.dropna(subset=["miou"]).groupby("backbone"):
        ax1.scatter(group[hours], group.miou, label=backbone, color=COLOURS.get(backbone))
    ax1.set_xlabel(f"{'GPU' if hours == 'gpu_hours' else 'device'}-hours per run (MLflow: cost/device_hours)")
    ax1.set_ylabel(f"final {MIOU}")
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=2)
    ax1.grid(alpha=0.3)
    cost = runs.groupby("backbone")[["params", "gflops"]].first().dropna()
    colours = [COLOURS.get(b, "grey") for b in cost.index]
    ax2.bar(cost.index, cost.params / 1e6, color=colours)
    ax2.set_ylabel("parameters [M]")
    ax3.bar(cost.index, cost.gflops, color=colours)
    ax3.set_ylabel("GFLOPs per forward pass at the crop")
    fig.tight_layout()
    return save_figure(fig, out, "cost")


def looks_figure(cells: list[CellLooks], out: Path, axes: StudyAxes) -> list[Path]:
    """The sequential study: Δ at each look with its repeated CI, the ±margin, and each look's boundaries: the
    green ticks bound the Δ estimate that stops for equivalence (its RCI then lies inside ±margin), the dotted lines
    at ±margin the estimate that stops for futility (from look 2, when the design has it). The y axis shows a few
    margins; an RCI beyond it is cut and written out. Planned looks not reached yet are labelled in grey."""
    fig, panels = _panels(max(len(cells), 1), width=5.0, height=3.8)
    for ax, cell in zip(panels, cells, strict=False):
        design, m = cell.current, cell.design.margin
        ks = np.arange(1, len(design.looks) + 1)
        lim = max([3 * m, *(1.3 * abs(look.delta) for look in cell.looks)])
        ax.axhspan(-m, m, color="grey", alpha=0.15, label=f"±{m:g} margin")
        ax.axhline(0, color="black", lw=0.8)
        if design.futility and len(ks) > 1:
            ax.hlines(
                [-m, m], 1.5, ks[-1] + 0.4, colors="tab:red", linestyles=":", label="futility: |estimate| ≥ margin"
            )
        label = "equivalence: estimate between"
        for look in cell.looks:
            inner = m - (look.rci_high - look.rci_low) / 2  # |Δ| below this puts the RCI inside ±margin
            if inner > 0:
                ax.hlines(
                    [-inner, inner], look.k - 0.25, look.k + 0.25, colors="tab:green", linestyles="--", label=label
                )
                label = None
            if look.rci_low < -lim or look.rci_high > lim:
                text = f"RCI\n{look.rci_low:+.2f}\n…{look.rci_high:+.2f}"
                ax.annotate(text, (look.k, 0.97 * lim), ha="left", va="top", fontsize=7, xytext=(4, 0),
                            textcoords="offset points")  # fmt: skip
        if cell.looks:
            k = [look.k for look in cell.looks]
            d = np.array([look.delta for look in cell.looks])
            low = np.maximum([look.rci_low for look in cell.looks], -lim)
            high = np.minimum([look.rci_high for look in cell.looks], lim)
            ax.errorbar(k, d, yerr=[d - low, high - d], fmt="o", color="tab:purple", capsize=4, label="Δ, repeated CI")
        ticks = [f"look {k}\n{n} seeds\np {p:.4f}" for k, n, p in zip(ks, design.looks, design.nominal(), strict=True)]
        ax.set_xticks(ks, ticks, fontsize=7)
        for tick, k in zip(ax.get_xticklabels(), ks, strict=True):
            tick.set_color("black" if k <= len(cell.looks) else "grey")
        ax.set_xlim(0.5, ks[-1] + 0.5)
        ax.set_ylim(-lim, lim)
        ax.set_title(cell.label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    panels[0].set_ylabel(f"Δ = {axes.delta_name} [final val mIoU points]")
    _legend_below(fig, panels[0], ncol=2)
    return save_figure(fig, out, "looks")
