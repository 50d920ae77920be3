"""Host syncs of the training step, counted on CPU.

A GPU stalls when the host waits for a value from it. On CPU nothing waits, but the operations that would wait on a
GPU pass through torch's dispatcher, where a dispatch mode sees them: a scalar read (item/float/bool), a copy to
the host, and the ops whose output size depends on the data (boolean-mask indexing, nonzero, masked_select,
unique). bench/gpu_check.py counts the real syncs on a GPU with torch.cuda.set_sync_debug_mode.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tiny import tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from deeplab.distributed import init_distributed
from deeplab.engine import train
from deeplab.step import _wrap_ddp, agree, build_parts, train_step

aten = torch.ops.aten
_SIZED_BY_DATA = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
}


class HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for the device on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_host = func is aten._to_copy.default and kwargs.get("device") is not None
        to_host = to_host and torch.device(kwargs["device"]).type == "cpu"
        masked = func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in _SIZED_BY_DATA or to_host or masked:
            self.ops.append(str(func))
        return func(*args, **kwargs)


def test_the_counter_sees_what_would_sync_a_gpu() -> None:
    x = torch.randn(5)
    with HostReads() as reads:
        float(x.sum())
        _ = x[x > 0]
        x.to("cpu", copy=True)
        torch.nonzero(x)
        x * 2  # no read
    assert len(reads.ops) == 4, reads.ops


@pytest.mark.parametrize("loss", ["ohem", "ce"])
def test_a_train_step_reads_nothing_back(tiny_data: Path, loss: str) -> None:
    cfg = tiny_config(tiny_data, **{"loss.name": loss})
    parts = build_parts(cfg, init_distributed("cpu"))
    g = torch.Generator().manual_seed(0)
    # uint8, as the loader yields them: the step's copy, normalization and int64 masks read nothing back either
    images = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 19, (2, 32, 64), dtype=torch.uint8, generator=g)
    masks[:, :4] = 255
    with HostReads() as reads:
        loss_value = train_step(parts, images, masks)
    assert reads.ops == [] and loss_value.requires_grad is False
    with HostReads() as reads:
        stop, total = agree(False, loss_value.double())
    assert len(reads.ops) == 1 and stop is False and total == pytest.approx(float(loss_value))


def test_each_iteration_syncs_once(tiny_data: Path, tmp_path: Path) -> None:
    """Between two iterations' hooks: one host read (the agreement), logging included, on the engine's own loop."""
    settings = {"train.iterations": 5, "train.eval_every": 0, "train.checkpoint_every": 0, "train.log_every": 2}
    cfg = tiny_config(tiny_data, **settings, **{"data.num_workers": 1})  # decoding runs in the worker, not here
    seen: list[int] = []
    with HostReads() as reads:
        result = train(cfg, tmp_path, on_iteration=lambda _it: seen.append(len(reads.ops)))
    assert result.status == "finished"
    per_iteration = [b - a for a, b in itertools.pairwise(seen)]
    assert per_iteration == [1, 1, 1, 1], reads.ops


def test_ddp_is_built_without_the_broadcast_buffers_warning(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _wrap_ddp(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)), torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
