"""Validation during training: metrics to the tracker, a class table per validation, final artifacts."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab.config import Config
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.distributed import DistInfo
from deeplab.evaluate import EvalResult, evaluate
from deeplab.labels import CLASS_NAMES
from deeplab.overlay import prediction_panel, save_overlay
from deeplab.tracking import (
    ARTIFACT_CONFUSION,
    ARTIFACT_OVERLAYS,
    ARTIFACT_PER_IMAGE,
    PREDICTION_KEY,
    VAL_MIOU,
    VAL_MIOU_BEST,
    VAL_MIOU_BEST_N,
    VAL_MIOU_BEST_STEP,
    VAL_MIOU_SEED,
    Tracker,
    iou_metric_name,
    points,
)

N_OVERLAYS = 3
N_PREDICTIONS = 4  # validation images shown at every validation (MLflow's image slider)


def prediction_indices(n_images: int, world_size: int, count: int = N_PREDICTIONS) -> list[int]:
    """Fixed validation images, spread over the split, among rank 0's shard (``evaluate`` gives rank r the indices
    r, r + world, …): the same images at every validation of a run, and of runs of the same world size."""
    shard = range(0, n_images, world_size)
    if not shard:
        return []
    picks = np.linspace(0, len(shard) - 1, min(count, len(shard))).round().astype(int)
    return sorted({shard[i] for i in picks})


def metrics_of(result: EvalResult, prefix: str = "val") -> dict[str, float]:
    """Tracker metrics of one evaluation (classes with an undefined IoU are left out)."""
    m = result.metrics
    out = {
        VAL_MIOU.replace("val", prefix, 1): points(m.miou),
        VAL_MIOU_SEED.replace("val", prefix, 1): points(m.miou_seed),
    }
    for name, value in zip(CLASS_NAMES, m.iou, strict=True):
        if not math.isnan(value):
            out[iou_metric_name(name).replace("val", prefix, 1)] = points(value)
    return out


def _write_class_table(path: Path, result: EvalResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "IoU_points", "IoU_void_as_fp_points"])
        for name, iou, seed in zip(CLASS_NAMES, m.iou, m.iou_seed, strict=True):
            writer.writerow([name, f"{100 * iou:.4f}", f"{100 * seed:.4f}"])
        writer.writerow(["mIoU", f"{100 * m.miou:.4f}", f"{100 * m.miou_seed:.4f}"])


def best_of_val(run_dir: Path, iteration: int) -> dict[str, float]:
    """The best single-scale mIoU (points) over this run's validations up to ``iteration``, read from their class
    tables (to their 4 decimals; a resumed run needs no extra state: tables after the checkpoint are rewritten as it
    replays)."""
    best, n = (-math.inf, -1), 0
    for table in (run_dir / "val").glob("iter_*/classes.csv"):
        step = int(table.parent.name.removeprefix("iter_"))
        if step > iteration:
            continue
        with open(table, newline="") as fh:
            miou = float(next(row for row in csv.reader(fh) if row[0] == "mIoU")[1])
        n += 1
        best = max(best, (miou, -step))  # ties: the earliest validation
    return {VAL_MIOU_BEST: best[0], VAL_MIOU_BEST_STEP: float(-best[1]), VAL_MIOU_BEST_N: float(n)}


def validate(
    cfg: Config,
    model: nn.Module,
    dataset: CityscapesSegmentation,
    info: DistInfo,
    tracker: Tracker,
    run_dir: Path,
    iteration: int,
    *,
    final: bool,
) -> dict[str, float]:
    """Single-scale validation (the curve); at the end also artifacts and, if configured, multi-scale + flip."""
    final_dir = run_dir / "final"
    overlays: list[str] = []
    shown = set(prediction_indices(len(dataset), info.world_size)) if info.is_main else set()
    panels: list[tuple[str, np.ndarray]] = []

    def keep(index: int, name: str, image: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor) -> None:
        if index in shown:
            panels.append((name, prediction_panel(image, mask, pred)))
        if final and info.is_main and len(overlays) < N_OVERLAYS:
            save_overlay(final_dir / "overlays" / f"{name}_overlay.png", image, pred)
            overlays.append(name)

    result = evaluate(
        model,
        dataset,
        cfg.data,
        device=info.device,
        amp=cfg.train.amp,
        num_classes=cfg.model.num_classes,
        align_corners=cfg.model.align_corners,
        per_image=final and cfg.eval.per_image,
        on_prediction=keep,
    )
    metrics = metrics_of(result)
    if final and (tuple(cfg.eval.scales) != (1.0,) or cfg.eval.flip):
        ms = evaluate(
            model,
            dataset,
            cfg.data,
            scales=cfg.eval.scales,
            flip=cfg.eval.flip,
            device=info.device,
            amp=cfg.train.amp,
            num_classes=cfg.model.num_classes,
            align_corners=cfg.model.align_corners,
            per_image=False,
        )
        metrics.update(metrics_of(ms, prefix="val_ms"))
    if not info.is_main:
        return metrics
    table = run_dir / "val" / f"iter_{iteration:06d}" / "classes.csv"
    _write_class_table(table, result)
    if cfg.train.log_best_of_val:
        metrics.update(best_of_val(run_dir, iteration))
    tracker.log_metrics(metrics, step=iteration)
    tracker.log_artifact(table, f"val/iter_{iteration:06d}")
    for name, panel in panels:
        tracker.log_image(panel, PREDICTION_KEY + name, iteration)
    if final:
        final_dir.mkdir(parents=True, exist_ok=True)
        np.save(final_dir / Path(ARTIFACT_CONFUSION).name, result.confusion)
        tracker.log_artifact(final_dir / Path(ARTIFACT_CONFUSION).name, "final")
        if result.per_image is not None:
            np.savez_compressed(
                final_dir / Path(ARTIFACT_PER_IMAGE).name, names=np.array(result.names), confusion=result.per_image
            )
            tracker.log_artifact(final_dir / Path(ARTIFACT_PER_IMAGE).name, "final")
        if overlays:
            tracker.log_artifact(final_dir / "overlays", str(Path(ARTIFACT_OVERLAYS).parent))
    return metrics
