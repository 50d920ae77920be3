"""CpuSyncBatchNorm over 2 gloo ranks equals BatchNorm2d on the concatenated batch (outputs, grads, stats)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deeplab.norm import CpuSyncBatchNorm, convert_sync_batchnorm


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 5, 6, generator=g) * 3 + 1, torch.randn(4, 3, 5, 6, generator=g)


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, upstream = _batch()
    x = x[rank * 2 : rank * 2 + 2].clone().requires_grad_(True)
    bn = CpuSyncBatchNorm(3)
    bn.weight.data.copy_(torch.tensor([0.7, 1.2, 0.9]))
    bn.bias.data.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = bn(x)
    (y * upstream[rank * 2 : rank * 2 + 2]).sum().backward()
    grads = [bn.weight.grad.clone(), bn.bias.grad.clone()]
    for g in grads:
        dist.all_reduce(g)  # what DDP does (sum; the reference's loss is the sum over both halves)
    # numpy copies: tensors shared through the queue vanish when this process exits
    queue.put((rank, *(t.detach().numpy().copy() for t in (y, x.grad, *grads, bn.running_mean, bn.running_var))))
    dist.destroy_process_group()


def test_two_ranks_equal_batchnorm_on_the_whole_batch() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {item[0]: [torch.from_numpy(a) for a in item[1:]] for item in (queue.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
    x, upstream = _batch()
    x.requires_grad_(True)
    ref = nn.BatchNorm2d(3)
    ref.weight.data.copy_(torch.tensor([0.7, 1.2, 0.9]))
    ref.bias.data.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = ref(x)
    (y * upstream).sum().backward()
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][2], ref.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(results[0][3], ref.bias.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(results[0][4], ref.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[0][5], ref.running_var, atol=1e-6, rtol=1e-5)


def test_without_process_group_it_is_plain_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], CpuSyncBatchNorm)
    x = torch.randn(2, 3, 4, 4)
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(converted[1].state_dict())
    torch.testing.assert_close(
        converted[1](x[:, :1].expand(-1, 4, -1, -1).contiguous()), ref(x[:, :1].expand(-1, 4, -1, -1).contiguous())
    )
