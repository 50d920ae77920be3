"""Process-group set-up from the environment (torchrun variables); the per-step agreement is deeplab.step.agree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from deeplab.errors import DeeplabError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise DeeplabError(f"{name}={text!r} must be an integer (the launcher's environment)") from None
    if value < minimum:
        raise DeeplabError(f"{name}={value} must be >= {minimum} (the launcher's environment)")
    return value


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (if any).

    gloo on CPU, nccl on CUDA; CUDA is used when available and ``device`` allows it (an empty
    CUDA_VISIBLE_DEVICES, as on nodes with fake GPUs, falls back to CPU).
    """
    world, rank, local_rank = _env_int("WORLD_SIZE", 1, 1), _env_int("RANK", 0, 0), _env_int("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise DeeplabError(f"RANK={rank} must be below WORLD_SIZE={world} (the launcher's environment)")
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, dev, backend)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (all ranks get the same answer); one collective, outside the loop."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
