"""Losses: plain cross-entropy and the seed's online hard example mining (OHEM) cross-entropy."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from deeplab.config import LossConfig


class OhemCrossEntropy(nn.Module):
    """Mean cross-entropy over the hard pixels, with the seed's rule.

    Hard pixels are those whose true-class probability is below ``thresh`` (loss > −log thresh). When no more
    than ``n_min = B·H·W / min_kept_divisor`` pixels are hard, the ``n_min`` pixels with the highest loss are kept
    instead (ties broken by ``topk``). Pixels labelled ``ignore_index`` are never kept. This equals the seed's
    sort-and-threshold code whenever more than ``n_min`` pixels are labelled. Like the seed, the selection is
    per rank (n_min counts this rank's images).
    """

    def __init__(self, thresh: float = 0.7, min_kept_divisor: int = 16, ignore_index: int = 255) -> None:
        super().__init__()
        self.loss_thresh = -math.log(thresh)
        self.min_kept_divisor = min_kept_divisor
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Both branches are computed with masks instead of boolean indexing: indexing by a mask sizes its result
        # from the data, a host sync on a GPU (three per step here). The topk costs about a sort of the batch,
        # which the seed's code paid too.
        n_min = target.numel() // self.min_kept_divisor
        pixel_loss = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none").flatten()
        labelled = target.flatten() != self.ignore_index
        hard = labelled & (pixel_loss > self.loss_thresh)
        n_hard = hard.sum()
        hard_mean = torch.where(hard, pixel_loss, 0.0).sum() / n_hard.clamp_min(1)
        k = min(max(n_min, 1), pixel_loss.numel())
        top = torch.where(labelled, pixel_loss, -1.0).topk(k, sorted=False).values  # losses are >= 0: -1 = void
        kept = top != -1.0  # fewer than k labelled pixels: the mean of all of them; a NaN stays (divergence shows)
        top_mean = torch.where(kept, top, 0.0).sum() / kept.sum().clamp_min(1)
        return torch.where(n_hard > n_min, hard_mean, top_mean)  # an all-void batch: 0, with the graph intact


def build_loss(cfg: LossConfig) -> nn.Module:
    """OHEM (the seed) or plain cross-entropy, both ignoring ``cfg.ignore_index``."""
    if cfg.name == "ohem":
        return OhemCrossEntropy(cfg.ohem_thresh, cfg.ohem_min_kept_divisor, cfg.ignore_index)
    return GlobalMeanCrossEntropy(ignore_index=cfg.ignore_index)


class GlobalMeanCrossEntropy(nn.Module):
    """Cross-entropy (fp32 even under autocast) averaged over the labelled pixels of the GLOBAL batch.

    Each rank divides its sum by the mean labelled-pixel count over ranks, so DDP's gradient averaging yields
    exactly the gradient of one process on the whole batch. Single-process: plain mean cross-entropy.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="sum")
        count = (target != self.ignore_index).sum().to(torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return total / count.clamp_min(1).to(total.dtype)
