"""One training step and the per-step agreement between ranks, written so that a GPU is never waited on.

``train_step`` queues forward, backward and the optimizer step and returns the loss as a device tensor; nothing in
it reads a value back to the host (OHEM included; fp16's GradScaler is the exception: torch reads ``found_inf``).
``agree`` is the step's one collective and its one host sync: it sums ``[stop requested, window loss]`` over ranks,
which answers both "stop here?" and "did the loss turn NaN/inf?" in one round trip. The loss is summed on the device
between logs (``LossWindow``) and becomes a host number through that same read. The loader's uint8 batch is
normalized here, on the device after the copy (``device_batch``; deeplab/data/normalize.py).
"""

from __future__ import annotations

import inspect
import resource
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deeplab.config import Config
from deeplab.data.normalize import Normalize
from deeplab.distributed import DistInfo, is_distributed
from deeplab.evaluate import autocast
from deeplab.loss import build_loss
from deeplab.model import build_model
from deeplab.norm import convert_sync_batchnorm
from deeplab.schedule import build_optimizer, build_scheduler


@dataclass
class TrainParts:
    model: nn.Module  # the plain module: checkpoints, validation, resume
    ddp_model: nn.Module  # what the step runs: DDP-wrapped when distributed, else ``model`` itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    device: torch.device
    amp: str
    channels_last: bool
    normalize: Normalize  # the data config's mean and std, applied on the device


def _wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP without a buffer broadcast before each forward (SyncBN keeps buffers equal; plain BN keeps them local).

    torch >= 2.14 names this ``forward_sync_buffers`` and warns about ``broadcast_buffers``; older torch (the GPU
    machines carry 2.11) only knows the latter. The new flag also broadcasts once at construction, which changes
    nothing: every rank built the same seeded model or loaded the same checkpoint.
    """
    ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def build_parts(cfg: Config, info: DistInfo) -> TrainParts:
    """Model (seeded by ``train.seed``), SyncBN when distributed, DDP, SGD, schedule, GradScaler, loss."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(info.device)
    if info.world_size > 1 and cfg.model.sync_bn:
        model = convert_sync_batchnorm(model, info.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.train.amp == "fp16" and info.device.type == "cuda")
    ddp_model = _wrap_ddp(model, info.device) if info.world_size > 1 else model
    criterion = build_loss(cfg.loss).to(info.device)
    return TrainParts(
        model,
        ddp_model,
        optimizer,
        scheduler,
        scaler,
        criterion,
        info.device,
        cfg.train.amp,
        cfg.train.channels_last,
        Normalize(cfg.data.mean, cfg.data.std),
    )


def device_batch(
    images: torch.Tensor, masks: torch.Tensor, device: torch.device, normalize: Normalize, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch on the device as the model takes it: uint8 images normalized there (a float batch is taken as
    normalized already: benchmarks' synthetic batches), masks as int64."""
    images = images.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True).long()
    if images.dtype == torch.uint8:
        images = normalize(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks


def train_step(parts: TrainParts, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Forward (autocast), fp32 loss, backward, SGD and schedule step; the loss stays on the device (detached).
    ``images`` uint8 [b, 3, h, w] as the loader yields them (or a normalized float batch), ``masks`` [b, h, w]."""
    images, masks = device_batch(images, masks, parts.device, parts.normalize, parts.channels_last)
    with autocast(parts.device, parts.amp):
        logits = parts.ddp_model(images)
    loss = parts.criterion(logits.float(), masks)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    return loss.detach()


def agree(stop_requested: bool, window_loss: torch.Tensor) -> tuple[bool, float]:
    """``(any rank asked to stop, window loss summed over ranks)``: one all_reduce, one device-to-host copy."""
    both = torch.stack([torch.full_like(window_loss, float(stop_requested)), window_loss])  # no host-to-device copy
    if is_distributed():
        dist.all_reduce(both)
    stops, loss = both.to("cpu", copy=True).tolist()
    return stops > 0, loss


class LossWindow:
    """The losses since the last log, summed on the device in float64 (a Python float sum, without reading them),
    and the window's seconds: whole iterations and, within them, waiting for data."""

    def __init__(self, device: torch.device, state: dict | None = None, rank: int = 0) -> None:
        state = state or {"loss": 0.0, "count": 0, "time": 0.0}
        # a checkpoint holds the sum over ranks; rank 0 carries it on, so the next agreed sum is the same total
        self.loss = torch.tensor(state["loss"] if rank == 0 else 0.0, dtype=torch.float64, device=device)
        self.agreed = float(state["loss"])  # the sum over ranks as of the last agree()
        self.count, self.time = int(state["count"]), float(state["time"])
        self.data_time = float(state.get("data_time", 0.0))  # checkpoints written before it was kept: 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss.double()

    def close_step(self, seconds: float, agreed_loss: float, data_seconds: float = 0.0) -> None:
        self.count += 1
        self.time += seconds
        self.data_time += data_seconds
        self.agreed = agreed_loss

    def mean(self, world_size: int) -> float:
        return self.agreed / (self.count * world_size)

    def reset(self) -> None:
        self.loss.zero_()
        self.agreed, self.count, self.time, self.data_time = 0.0, 0, 0.0, 0.0

    def state(self) -> dict:
        """What a checkpoint keeps: host numbers only (no extra read: ``agreed`` came with the last sync)."""
        return {"loss": self.agreed, "count": self.count, "time": self.time, "data_time": self.data_time}


def peak_memory_gb(device: torch.device) -> float:
    """GiB: CUDA's peak allocation since the last call (the peak is reset; no device sync), or on CPU the
    process's peak resident set since it started (Linux keeps no resettable peak)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB
