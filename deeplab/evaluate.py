"""Whole-image evaluation, single scale or multi-scale + flip, sharded over ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deeplab.config import DataConfig
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.transforms import EvalTransform
from deeplab.distributed import is_distributed
from deeplab.metrics import ConfusionMatrix, MetricResult


@dataclass
class EvalResult:
    confusion: np.ndarray  # (n+1)x(n+1), summed over images and ranks
    metrics: MetricResult
    names: list[str]  # image names, in dataset order (on rank 0; empty elsewhere when per_image)
    per_image: np.ndarray | None  # (N, n+1, n+1) per-image matrices, aligned with names


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the given device, or nothing for amp="none"."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _rescale(image: torch.Tensor, scale: float, align_corners: bool) -> torch.Tensor:
    if scale == 1:
        return image
    if align_corners:  # the seed: resized to int(H·s)×int(W·s) with corners aligned
        size = [int(image.shape[-2] * scale), int(image.shape[-1] * scale)]
        return F.interpolate(image, size=size, mode="bilinear", align_corners=True)
    return F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict(
    model: nn.Module,
    image: torch.Tensor,
    scales: tuple[float, ...],
    flip: bool,
    amp: str,
    align_corners: bool = False,
) -> torch.Tensor:
    """Summed softmax probabilities [B,C,H,W] over scales (and horizontal flips) at the input's size."""
    size = image.shape[-2:]
    total = None
    for scale in scales:
        scaled = _rescale(image, scale, align_corners)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            with autocast(image.device, amp):
                logits = model(x)
            logits = logits.float().flip(-1) if flipped else logits.float()
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
    return total


def evaluate(
    model: nn.Module,
    dataset: CityscapesSegmentation,
    data_cfg: DataConfig,
    *,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    device: torch.device | None = None,
    amp: str = "none",
    num_classes: int = 19,
    align_corners: bool = False,
    per_image: bool = True,
    progress: bool = False,
    on_prediction: Callable[[int, str, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> EvalResult:
    """Evaluate ``model`` on every image of ``dataset`` (ranks take interleaved shards; results reduced).

    ``align_corners`` is the model config's: the seed resizes images and logits with corners aligned.
    ``on_prediction(index, name, image, mask, pred)`` sees each of this rank's images (uint8 image [3,H,W], train-id
    mask with 255 void, prediction [H,W] on the CPU)."""
    device = device or next(model.parameters()).device
    rank, world = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
    transform = EvalTransform(data_cfg)
    metric = ConfusionMatrix(num_classes, device=device)
    mine: list[tuple[int, np.ndarray]] = []
    was_training = model.training
    model.eval()
    indices = range(rank, len(dataset), world)
    for index in tqdm(indices, desc="eval", disable=not progress, leave=False):
        raw_image, raw_mask = dataset.load(index)
        # normalized on the device, as in training: the same table, the same bits on any device
        image, mask = transform(raw_image[None].to(device), raw_mask.to(device))
        pred = predict(model, image, scales, flip, amp, align_corners).argmax(1)[0]
        mat = metric.update(pred, mask)
        if per_image:
            mine.append((index, mat.cpu().numpy()))
        if on_prediction is not None:
            on_prediction(index, dataset.names[index], raw_image, raw_mask, pred.cpu())
    model.train(was_training)
    metric.reduce_from_all_processes()
    names, stacked = _gather_per_image(mine, dataset.names, world) if per_image else ([], None)
    return EvalResult(metric.mat.cpu().numpy(), metric.compute(), names, stacked)


def _gather_per_image(
    mine: list[tuple[int, np.ndarray]], all_names: list[str], world: int
) -> tuple[list[str], np.ndarray | None]:
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    items = sorted((item for part in parts for item in part), key=lambda item: item[0])
    if not items:
        return [], None
    return [all_names[i] for i, _ in items], np.stack([m for _, m in items])
