"""SGD with the seed's parameter groups, and the warmup + poly learning-rate schedule."""

from __future__ import annotations

import functools

import torch
from torch import nn

from deeplab.config import Config, OptimConfig


def poly_warmup_lr(
    it: int,
    *,
    base_lr: float,
    max_iter: int,
    warmup_iters: int,
    warmup_start_lr: float,
    warmup: str = "exp",
    power: float = 0.9,
) -> float:
    """Learning rate at iteration ``it`` (0-based): exponential or linear warmup, then poly decay to 0."""
    if warmup != "none" and it < warmup_iters:
        frac = it / warmup_iters
        if warmup == "exp":  # the seed: geometric from warmup_start_lr to base_lr
            return warmup_start_lr * (base_lr / warmup_start_lr) ** frac
        return warmup_start_lr + (base_lr - warmup_start_lr) * frac
    start = warmup_iters if warmup != "none" else 0
    progress = min(max(it - start, 0) / max(max_iter - start, 1), 1.0)
    return base_lr * (1.0 - progress) ** power


def _is_backbone_bn(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and name.startswith("backbone.")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD; no weight decay on BN parameters (backbone only, as in the seed HEAD, or all), optionally on biases,
    or on the whole backbone (the seed's Feb-2019 code); with all three off everything decays (the res50 fork)."""
    no_decay: set[int] = set()
    if cfg.no_decay_backbone:
        no_decay.update(id(p) for name, p in model.named_parameters() if name.startswith("backbone."))
    for name, module in model.named_modules():
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if (cfg.no_decay_bn == "all" and is_bn) or (cfg.no_decay_bn == "backbone" and _is_backbone_bn(name, module)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
        if cfg.no_decay_bias and getattr(module, "bias", None) is not None and not is_bn:
            no_decay.add(id(module.bias))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over ``poly_warmup_lr`` (a ratio to the base lr), stepped once per iteration."""
    lr_at = functools.partial(
        poly_warmup_lr,
        base_lr=cfg.optim.lr,
        max_iter=cfg.train.iterations,
        warmup_iters=cfg.schedule.warmup_iters,
        warmup_start_lr=cfg.schedule.warmup_start_lr,
        warmup=cfg.schedule.warmup,
        power=cfg.schedule.power,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_at(it) / cfg.optim.lr)
