"""CpuSyncBatchNorm (the CPU path) over 2 gloo ranks equals BatchNorm2d on the concatenated batch; torch's
SyncBatchNorm (the GPU path) as far as a CPU can check it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deeplab.model import DeepLabV3Plus
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


# The path GPUs run: torch's nn.SyncBatchNorm, converted by convert_sync_batchnorm(model, cuda device). Without a GPU
# the conversion and the non-distributed forward can still be checked; the synchronised forward needs CUDA and is
# run by bench/gpu_check.py.


def _small_deeplab() -> nn.Module:
    torch.manual_seed(0)
    return DeepLabV3Plus(backbone="resnet50", aspp_channels=8, low_level_channels=4, decoder_channels=8)


def test_the_gpu_conversion_keeps_every_parameter_and_buffer_name_and_value() -> None:
    plain = _small_deeplab()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    gpu = convert_sync_batchnorm(_small_deeplab(), torch.device("cuda"))  # converts on CPU; no GPU needed
    cpu = convert_sync_batchnorm(_small_deeplab(), torch.device("cpu"))
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in gpu.modules()) == n_bn > 50
    assert not any(type(m) is nn.BatchNorm2d for m in gpu.modules())
    assert sum(isinstance(m, CpuSyncBatchNorm) for m in cpu.modules()) == n_bn
    reference = plain.state_dict()
    for converted in (gpu.state_dict(), cpu.state_dict()):  # checkpoints move between GPU and CPU runs
        assert converted.keys() == reference.keys()
        assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_torch_syncbatchnorm_outside_a_process_group_is_batchnorm() -> None:
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    ref = nn.BatchNorm2d(3)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    for mode in ("train", "eval"):
        ref.train(mode == "train")
        sync.train(mode == "train")
        torch.testing.assert_close(sync(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(sync.running_mean, ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=0, atol=0)


def test_torch_syncbatchnorm_refuses_cpu_tensors_in_a_process_group(tmp_path: Path) -> None:
    """Why CPU runs need CpuSyncBatchNorm: should torch ever accept CPU here, this test says so."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        sync = nn.SyncBatchNorm(3).train()
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            sync(torch.randn(2, 3, 4, 4))
    finally:
        dist.destroy_process_group()
