"""Synchronised batch norm for DDP: torch's SyncBatchNorm on GPUs, a small all-reduce version on CPU (gloo).

GPU runs take torch's ``nn.SyncBatchNorm`` (``convert_sync_batchnorm`` with a CUDA device): its fused kernels, one
all_gather per layer in forward and one all_reduce in backward. It refuses CPU tensors inside a process group, so
CPU runs take ``CpuSyncBatchNorm``, which exists so that 2-process gloo tests can pin DDP equivalence (same batch
statistics as one process on the concatenated batch). Both keep BatchNorm2d's parameter and buffer names, so a
checkpoint moves between the two. torch's version drops empty ranks' statistics by boolean indexing, a host sync
per layer on 2+ GPUs (pytorch#78549); bench/gpu_check.py measures what such a sync per layer costs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are summed over all ranks (autograd-aware all_reduce)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        # two passes (mean, then centred squares): E[x²]−E[x]² cancels badly on near-constant channels
        channels = x.shape[1]
        sums = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), x.new_full((1,), x.numel() // channels)]))
        count = sums[-1]
        mean = sums[:channels] / count
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = centred * scale[None, :, None, None]
        return out + self.bias[None, :, None, None] if self.affine else out


class LocalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that ``convert_sync_batchnorm`` leaves per-GPU (the seed's Feb-2019 residual-branch norms)."""


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace BatchNorm2d layers (but LocalBatchNorm2d) by their synchronised version for ``device`` (call
    before wrapping in DDP)."""
    return _convert(module, nn.SyncBatchNorm if device.type == "cuda" else CpuSyncBatchNorm)


def _convert(module: nn.Module, sync: type[nn.Module]) -> nn.Module:
    plain = isinstance(module, nn.BatchNorm2d) and not isinstance(module, (CpuSyncBatchNorm, LocalBatchNorm2d))
    if plain:
        new = sync(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        ref = module.weight if module.affine else module.running_mean
        new = new.to(device=ref.device, dtype=ref.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child, sync))
    return module
