"""Per-step host syncs of the training loop on 2 gloo ranks: the previous protocol vs deeplab.step.agree.

Before (the engine until issue 12): each iteration read the loss (``float(loss)``), agreed on "non-finite?" with one
all_reduce and on "stop?" with another, and every ``log_every`` averaged the window over ranks with a third. After:
one all_reduce of ``[stop, window loss]`` and one copy to the host (``agree``), the loss summed on the device.
On CPU a host read costs nothing, so what this measures is the collectives: each is a round trip over gloo and a
barrier between ranks. Two figures, the variants alternating in blocks (ABAB) on both ranks alike:

- protocol alone: the bookkeeping of one iteration on a ready loss tensor (microseconds per iteration);
- the engine's real ``train_step`` (synthetic_tiny's ResNet-50 DeepLabV3+, OHEM, 2 x 32x64 per rank) followed by
  each protocol (seconds per iteration): the share the bookkeeping takes of a small step.

On a GPU the figure that matters is the host waiting for the device, measured by bench/gpu_check.py.

    python bench/bench_step_sync.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deeplab.config import load_config
from deeplab.distributed import init_distributed
from deeplab.step import LossWindow, agree, build_parts, train_step

REPO = Path(__file__).resolve().parents[1]
LOG_EVERY = 50  # the presets'


def _all_max(flag: bool) -> bool:  # the previous any_rank()
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _mean_over_ranks(value: float) -> float:  # the previous mean_over_ranks()
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def before(loss: torch.Tensor, window: dict, iteration: int) -> None:
    value = float(loss)
    if _all_max(not torch.isfinite(loss).item()):
        raise RuntimeError("diverged")
    window["loss"] += value
    window["count"] += 1
    if iteration % LOG_EVERY == 0:
        _mean_over_ranks(window["loss"] / window["count"])
        window.update(loss=0.0, count=0)
    _all_max(False)  # the stop flag


def after(loss: torch.Tensor, window: LossWindow, iteration: int) -> None:
    window.add(loss)
    stop, total = agree(False, window.loss)
    window.close_step(0.0, total)
    if not math.isfinite(total) or stop:
        raise RuntimeError("diverged")
    if iteration % LOG_EVERY == 0:
        window.mean(dist.get_world_size())
        window.reset()


def _time_blocks(run_block, blocks: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"before": [], "after": []}
    for b in range(blocks):
        for name in ("before", "after") if b % 2 == 0 else ("after", "before"):
            dist.barrier()
            times[name].append(run_block(name))
    return times


def _worker(rank: int, port: int, quick: bool, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    loss = torch.tensor(1.5)
    per_block = 200 if quick else 500

    def protocol_block(name: str) -> float:
        window = {"loss": 0.0, "count": 0} if name == "before" else LossWindow(info.device)
        step = before if name == "before" else after
        tick = time.perf_counter()
        for i in range(1, per_block + 1):
            step(loss, window, i)
        return (time.perf_counter() - tick) / per_block

    protocol = _time_blocks(protocol_block, 6 if quick else 10)

    overrides = ["data.crop_size=[32,64]", "data.batch_size_per_gpu=2", "train.device=cpu", "data.synthetic=null"]
    cfg = load_config(REPO / "configs" / "synthetic_tiny.yaml", overrides)
    parts = build_parts(cfg, info)
    g = torch.Generator().manual_seed(rank)
    images, masks = torch.randn(2, 3, 32, 64, generator=g), torch.randint(0, 19, (2, 32, 64), generator=g)
    steps = 3 if quick else 5

    def step_block(name: str) -> float:
        window = {"loss": 0.0, "count": 0} if name == "before" else LossWindow(info.device)
        bookkeeping = before if name == "before" else after
        tick = time.perf_counter()
        for i in range(1, steps + 1):
            bookkeeping(train_step(parts, images, masks), window, i)
        return (time.perf_counter() - tick) / steps

    step_block("after")  # warm-up: allocator, oneDNN kernel choice
    stepped = _time_blocks(step_block, 4 if quick else 8)
    if rank == 0:
        out.update(protocol=protocol, stepped=stepped)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer blocks and iterations")
    args = parser.parse_args()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), args.quick, out), nprocs=2, join=True)
        out = dict(out)
    med = {k: {n: statistics.median(v) for n, v in out[k].items()} for k in ("protocol", "stepped")}
    p, s = med["protocol"], med["stepped"]
    print("2 gloo ranks, 1 thread each, variants alternating in blocks, medians of the blocks")
    print("collectives per iteration: before 2 (+1 every log_every) and 3 host reads; after 1 and 1 host read")
    print(
        f"protocol alone   before {1e6 * p['before']:7.1f} us/iter   after {1e6 * p['after']:7.1f} us/iter   "
        f"({p['before'] / p['after']:.2f}x less time)"
    )
    saved = s["before"] - s["after"]
    print(
        f"real train step  before {s['before']:.4f} s/iter   after {s['after']:.4f} s/iter   "
        f"difference {1000 * saved:+.2f} ms/iter ({100 * saved / s['before']:+.2f}% of a step; protocol alone "
        f"predicts {1000 * (p['before'] - p['after']):.2f} ms)"
    )


if __name__ == "__main__":
    main()
