"""The 2-process section of bench/gpu_check.py: SyncBatchNorm, DDP, the metric's all-reduce, checkpoint and resume.

Two ranks (rank 0 the section's process, rank 1 spawned: never forked, see gpu_check.py): nccl with one GPU each
when 2 GPUs exist, else gloo with both ranks on the one device (cuda:0, or the CPU in the smoke). At tiny sizes
(configs/synthetic_tiny.yaml shrunk, data from deeplab.data.synth), each rank checks
- ``syncbn``: the engine's synchronised BN (``deeplab.norm.convert_sync_batchnorm``: torch's nn.SyncBatchNorm on
  CUDA, CpuSyncBatchNorm on CPU) on half a batch against float64 ``batch_norm`` on the whole batch: output, input
  and parameter gradients, running statistics;
- ``ddp``: ``build_parts`` + ``train_step`` at world size 2: the parameters stay bit-identical on both ranks;
- ``metric``: ``ConfusionMatrix.reduce_from_all_processes`` equals the sum of both ranks' matrices;
- ``resume``: ``deeplab.engine.train`` stopped (StopFlag) after ``STOP_AT`` iterations, then resumed to the end,
  against one uninterrupted run: final weights, buffers and every logged loss.
Rank 0 runs in the section's process and records each check as it ends, so a hang keeps what was measured.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from gpu_check_sections import REPO, Ctx
from torch import nn

WORLD = 2
ITERATIONS, STOP_AT = 4, 2
# configs/synthetic_tiny.yaml shrunk: 64x128 frames, 32x64 crops, 2 images per rank, a narrow head, no mid-run
# validation or checkpoint (the stop makes the one checkpoint that matters).
TINY = {
    "data.synthetic.train": 4,
    "data.synthetic.val": 1,
    "data.synthetic.height": 64,
    "data.synthetic.width": 128,
    "data.crop_size": [32, 64],
    "data.batch_size_per_gpu": 2,
    "data.val_max_images": 1,
    "model.aspp_channels": 32,
    "model.low_level_channels": 8,
    "model.decoder_channels": 32,
    "schedule.warmup_iters": 1,
    "train.iterations": ITERATIONS,
    "train.eval_every": 0,
    "train.checkpoint_every": 0,
    "train.log_every": 1,
    "train.deterministic": True,
}
# On CUDA, bilinear upsampling's backward and the loss's scatter add with atomics in no fixed order even under
# torch.use_deterministic_algorithms(warn_only=True): a resumed run may differ from the uninterrupted one by a few
# ulps per step. On CPU the two must be bit-identical.
CUDA_RESUME_RTOL = 1e-4
SYNCBN_RTOL = 1e-4  # fp32 statistics over a few thousand values per channel, against float64


def plan(device: torch.device) -> dict:
    """Backend and per-rank devices: nccl on 2 GPUs, else gloo with both ranks on one device."""
    if device.type == "cuda" and torch.cuda.device_count() >= WORLD:
        return {"backend": "nccl", "devices": [f"cuda:{r}" for r in range(WORLD)]}
    one = "cuda:0" if device.type == "cuda" else "cpu"
    return {"backend": "gloo", "devices": [one] * WORLD}


def section_ddp(ctx: Ctx) -> None:
    """Rank 0 is this process (its figures recorded as they come), rank 1 a spawned one."""
    from deeplab.data.synth import ensure_synthetic

    setup = plan(ctx.device)
    ctx.record("setup", setup)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_ddp."))
    try:
        data = tiny_config(work, "cpu").data
        ensure_synthetic(Path(data.root), data.synthetic)  # once, before the ranks start
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        other = multiprocessing.get_context("spawn").Process(target=_rank, args=(1, port, setup, work, ctx.left()))
        other.start()
        try:
            results = _rank(0, port, setup, work, ctx.left(), ctx.record)
            other.join(max(1.0, ctx.left()))
        finally:
            other.kill()
            other.join()
        if (work / "rank1.error").exists():
            raise RuntimeError(f"rank 1: {(work / 'rank1.error').read_text()[-1500:]}")
        failed = [k for k, v in results.items() if not v.get("ok")]
        ctx.record("ok", not failed)
        if failed:
            raise AssertionError(f"checks failed: {', '.join(failed)} (figures in the results)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tiny_config(work: Path, device: str):
    from deeplab.config import load_config

    overrides = {**TINY, "data.root": str(work / "data"), "train.device": device.split(":")[0]}
    return load_config(REPO / "configs/synthetic_tiny.yaml", overrides)


def _rank(rank: int, port: int, setup: dict, work: Path, seconds: float, record=None) -> dict:
    """One rank: join the group, run the four checks, ``record`` each (rank 0); a failure goes to rankN.error."""
    device = torch.device(setup["devices"][rank])
    local = device.index if device.index is not None else 0  # gloo on one GPU: both ranks on cuda:0
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(local), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // WORLD))  # two ranks share the cores
    if device.type == "cuda":
        torch.cuda.set_device(device)
    results: dict = {}
    timeout = timedelta(seconds=max(10.0, seconds))  # a rank that dies leaves the other waiting this long at most
    try:
        dist.init_process_group(setup["backend"], rank=rank, world_size=WORLD, timeout=timeout)
        cfg = tiny_config(work, str(device))
        # the engine's progress lines print even with progress="off" (deeplab.progress.Progress): keep them here
        with open(work / f"rank{rank}.log", "w") as log, contextlib.redirect_stdout(log):
            for name, check in (("syncbn", _syncbn), ("ddp", _ddp), ("metric", _metric), ("resume", _resume)):
                tick = time.perf_counter()
                results[name] = check(cfg, device, rank, work)
                results[name]["seconds"] = round(time.perf_counter() - tick, 2)
                if record is not None:
                    record(name, results[name])
    except Exception:
        (work / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return results


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm().clamp_min(1e-30))


def _syncbn(_cfg, device: torch.device, rank: int, _work: Path) -> dict:
    """The engine's synchronised BN on this rank's half of a batch vs float64 batch_norm on the whole batch."""
    from deeplab.norm import convert_sync_batchnorm

    channels, half = 16, 2
    g = torch.Generator().manual_seed(0)  # the same whole batch on both ranks
    x_all = torch.randn(WORLD * half, channels, 12, 20, generator=g) * 2 + 1
    upstream_all = torch.randn(x_all.shape, generator=g)
    bn = convert_sync_batchnorm(nn.BatchNorm2d(channels), device).train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
    mine = slice(rank * half, (rank + 1) * half)
    x = x_all[mine].to(device).requires_grad_(True)
    y = bn(x)
    (y * upstream_all[mine].to(device)).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)  # a parameter's gradient is the sum of the ranks' (DDP averages it later)

    ref_x = x_all.double().requires_grad_(True)
    w, b = (p.detach().double().cpu().requires_grad_(True) for p in (bn.weight, bn.bias))
    mean, var = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    ref = F.batch_norm(ref_x, mean, var, w, b, True, bn.momentum, bn.eps)
    (ref * upstream_all.double()).sum().backward()
    rel = {
        "output": _rel(y.detach(), ref.detach()[mine]),
        "grad_input": _rel(x.grad, ref_x.grad[mine]),
        "grad_weight_bias": _rel(grads, torch.cat([w.grad, b.grad])),
        "running_mean": _rel(bn.running_mean, mean),
        "running_var": _rel(bn.running_var, var),
    }
    worst = max(rel.values())
    return {"layer": type(bn).__name__, "rel_diff": rel, "worst": worst, "ok": worst < SYNCBN_RTOL}


def _ddp(cfg, device: torch.device, rank: int, _work: Path) -> dict:
    """build_parts + 2 train_steps at world size 2 on different data per rank: the parameters stay identical."""
    from deeplab.distributed import DistInfo
    from deeplab.step import build_parts, train_step

    parts = build_parts(cfg, DistInfo(rank, WORLD, device.index or 0, device, dist.get_backend()))
    norms = sorted({type(m).__name__ for m in parts.model.modules() if "Norm" in type(m).__name__})
    h, w = cfg.data.crop_size
    losses = []
    for step in range(2):
        g = torch.Generator().manual_seed(100 * step + rank)  # each rank its own half of the global batch
        images = torch.randn(cfg.data.batch_size_per_gpu, 3, h, w, generator=g)
        masks = torch.randint(0, 19, (cfg.data.batch_size_per_gpu, h, w), generator=g)
        losses.append(float(train_step(parts, images, masks)))
    flat = torch.cat([p.detach().reshape(-1) for p in parts.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], t) for t in gathered[1:])
    return {
        "wrapped": type(parts.ddp_model).__name__,
        "norm_layers": norms,
        "losses": losses,
        "params": flat.numel(),
        "params_identical_across_ranks": same,
        "ok": same and all(map(torch.isfinite, map(torch.tensor, losses))),
    }


def _metric(_cfg, device: torch.device, rank: int, _work: Path) -> dict:
    """ConfusionMatrix.reduce_from_all_processes against the sum of both ranks' matrices made here."""
    from deeplab.metrics import ConfusionMatrix, confusion

    def pair(r: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(10 + r)
        gt = torch.randint(0, 20, (2, 48, 80), generator=g)
        gt[gt == 19] = 255  # some void
        return torch.randint(0, 19, gt.shape, generator=g), gt

    expected = sum(confusion(*pair(r)) for r in range(WORLD))
    metric = ConfusionMatrix(device=device)
    metric.update(*(t.to(device) for t in pair(rank)))
    metric.reduce_from_all_processes()
    equal = torch.equal(metric.mat.cpu(), expected.cpu())
    return {"pixels": int(metric.mat.sum()), "equal_to_sum": equal, "ok": equal}


class _Losses:
    """A tracker that keeps train/loss per iteration (rank 0's; the engine logs the mean over ranks)."""

    def __init__(self) -> None:
        self.loss: dict[int, float] = {}

    def log_metrics(self, metrics: dict, step: int) -> None:
        if "train/loss" in metrics:
            self.loss[step] = metrics["train/loss"]

    def log_params(self, params: dict) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_artifact(self, local_path, artifact_path: str = "") -> None: ...
    def log_image(self, image, key: str, step: int) -> None: ...
    def log_inputs(self, datasets: list) -> None: ...
    def flush(self) -> None: ...
    def close(self, status: str) -> None: ...


def _resume(cfg, device: torch.device, rank: int, work: Path) -> dict:
    """engine.train stopped at STOP_AT then resumed, against an uninterrupted run: weights, buffers and losses."""
    from deeplab.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from deeplab.engine import StopFlag, train

    straight, resumed = _Losses(), _Losses()
    whole = train(cfg, work / "straight", straight, progress="off")
    stop = StopFlag()

    def stop_at(i: int) -> None:
        if i == STOP_AT:
            stop.request()

    first = train(cfg, work / "resumed", resumed, stop=stop, progress="off", on_iteration=stop_at)
    second = train(cfg, work / "resumed", resumed, progress="off")
    a = load_checkpoint(work / "straight" / CHECKPOINT_NAME)["model"]
    b = load_checkpoint(work / "resumed" / CHECKPOINT_NAME)["model"]
    floats = [k for k, v in a.items() if v.is_floating_point()]
    worst = max(_rel(b[k], a[k]) for k in floats)
    bitwise = all(torch.equal(a[k], b[k]) for k in a) and straight.loss == resumed.loss
    ok = first.status == "interrupted" and first.iteration == STOP_AT and second.status == "finished"
    ok = ok and (bitwise if device.type == "cpu" else worst <= CUDA_RESUME_RTOL)
    return {
        "iterations": ITERATIONS,
        "stopped_at": first.iteration,
        "statuses": [whole.status, first.status, second.status],
        "losses_straight": straight.loss,
        "losses_resumed": resumed.loss,
        "bit_identical": bitwise,
        "worst_rel_diff": worst,
        "tolerance": 0.0 if device.type == "cpu" else CUDA_RESUME_RTOL,
        "val_mIoU": [whole.metrics.get("val/mIoU"), second.metrics.get("val/mIoU")],
        "ok": ok,
    }
