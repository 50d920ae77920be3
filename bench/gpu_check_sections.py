"""The measurements of bench/gpu_check.py, one function per section; each records its figures as it goes.

Every section builds what it measures the way the engine does (``deeplab.step.build_parts`` from the seed presets,
``train_step``, ``deeplab.evaluate.predict``, ``build_train_loader``), with random initial weights: no pretrained
weights can be fetched on the device machine, and speed does not depend on them.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from deeplab.config import Config, load_config
from deeplab.distributed import DistInfo
from deeplab.loss import build_loss
from deeplab.model import build_model
from deeplab.step import LossWindow, agree, build_parts, train_step

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"resnet50": "configs/cityscapes_r50_seed.yaml", "resnet101": "configs/cityscapes_r101_seed.yaml"}
SEED_ITERATIONS = 41_000
MODES = {"fp32": ("none", False), "bf16": ("bf16", False), "bf16+channels_last": ("bf16", True)}
# Dense datasheet peaks in TFLOP/s (SXM parts; "fp32" = TF32 tensor cores, which cuDNN convs use by default).
DATASHEET = {"H200": {"bf16": 989.4, "fp32": 494.7}, "H100": {"bf16": 989.4, "fp32": 494.7}}
# Tolerances of the precision check, as relative loss differences to fp32 (see bench/README.md for the reasons).
TOLERANCE = {"first": {"bf16": 2e-2, "fp16": 5e-3, "channels_last": 5e-3}, "late": {"bf16": 0.1, "fp16": 0.05}}


class SkipSection(Exception):
    """A section that does not apply here (recorded as skipped, with the reason)."""


@dataclass
class Sizes:
    crop: int = 768
    batch: int = 4
    iterations: int = 30  # precision check
    warmup: int = 5
    timed: int = 20
    eval_hw: tuple[int, int] = (1024, 2048)
    eval_reps: int = 3
    data_hw: tuple[int, int] = (1024, 2048)
    data_images: int = 8
    workers: tuple[int, ...] = (1, 2, 4, 8, 12)
    data_seconds: float = 4.0
    matmul: int = 8192
    rounds: int = 4  # ABAB rounds of the sync-cost comparisons
    head: dict = field(default_factory=dict)  # config overrides of the head's widths (the smoke's are narrow)
    # torch intra-op threads of a section (0: torch's default). The smoke's tiny ops gain nothing from threads, and on
    # a loaded 2-core machine every parallel region waits for a descheduled team thread: 1 ran 20-50x faster there.
    threads: int = 0

    @classmethod
    def smoke(cls) -> Sizes:
        narrow = {"model.aspp_channels": 32, "model.low_level_channels": 8, "model.decoder_channels": 32}
        return cls(32, 2, 3, 1, 1, (32, 64), 1, (128, 256), 4, (1, 2), 0.5, 256, 1, narrow, threads=1)


@dataclass
class Ctx:
    """What a section gets: sizes, the device, a deadline and ``record`` (writes the partial results at once)."""

    sizes: Sizes
    device: torch.device
    deadline: float
    record: Callable[[str, object], None]
    earlier: dict = field(default_factory=dict)  # results of the sections before this one

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def seed_config(backbone: str, sizes: Sizes, amp: str = "none", channels_last: bool = False, **extra) -> Config:
    overrides = {
        "model.weights": "none",
        "train.amp": amp,
        "train.channels_last": channels_last,
        "data.crop_size": [sizes.crop, sizes.crop],
        "data.batch_size_per_gpu": sizes.batch,
        **sizes.head,
        **extra,
    }
    return load_config(REPO / PRESETS[backbone], overrides)


def one_gpu(device: torch.device) -> DistInfo:
    return DistInfo(0, 1, 0, device, None)


def structured_batch(i: int, sizes: Sizes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable batch: a random coarse label map, each class a colour, plus noise (never zeros)."""
    g = torch.Generator().manual_seed(1000 + i)
    cells = max(2, sizes.crop // 32)
    coarse = torch.randint(0, 19, (sizes.batch, 1, cells, cells), generator=g).float()
    masks = F.interpolate(coarse, size=(sizes.crop, sizes.crop), mode="nearest")[:, 0].long()
    masks[:, : sizes.crop // 16] = 255  # some void, as in real labels
    palette = torch.randn(20, 3, generator=torch.Generator().manual_seed(7))
    images = palette[masks.clamp(max=19)].permute(0, 3, 1, 2) + 0.5 * torch.randn(masks.shape[0], 3, *masks.shape[1:])
    return images.to(device), masks.to(device)


def matmul_tflops(device: torch.device, n: int, dtype: torch.dtype, tf32: bool) -> float:
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        for _ in range(2):
            a @ b
        times = []
        for _ in range(5):
            _sync(device)
            tick = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - tick)
        return 2 * n**3 / statistics.median(times) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def section_env(ctx: Ctx) -> None:
    import torchvision

    cuda = ctx.device.type == "cuda"
    name = torch.cuda.get_device_name(ctx.device) if cuda else "cpu"
    ctx.record("device", name)
    ctx.record("torch", torch.__version__)
    ctx.record("torchvision", torchvision.__version__)
    ctx.record("cpu_count", os.cpu_count())
    ctx.record("cudnn_allow_tf32", torch.backends.cudnn.allow_tf32)
    if cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        ctx.record("memory_gib", round(props.total_memory / 2**30, 1))
        ctx.record("capability", f"{props.major}.{props.minor}")
        ctx.record("cudnn", torch.backends.cudnn.version())
    sheet = next((v for k, v in DATASHEET.items() if k in name), None)
    ctx.record("datasheet_tflops", sheet)
    ceilings = {"bf16": matmul_tflops(ctx.device, ctx.sizes.matmul, torch.bfloat16, False)}
    ctx.record("matmul_tflops", ceilings)
    ceilings["fp32"] = matmul_tflops(ctx.device, ctx.sizes.matmul, torch.float32, tf32=cuda)  # TF32 on a GPU
    ctx.record("matmul_tflops", ceilings)


def _losses(cfg: Config, ctx: Ctx) -> list[float]:
    parts = build_parts(cfg, one_gpu(ctx.device))  # seeded by train.seed: the same init for every run
    losses = []
    for i in range(ctx.sizes.iterations):
        images, masks = structured_batch(i, ctx.sizes, ctx.device)
        losses.append(float(train_step(parts, images, masks)))
    return losses


def section_correctness(ctx: Ctx) -> None:
    """Same init and data in fp32, bf16, fp16 + GradScaler, bf16 + channels_last; syncs per step; SyncBN."""
    s = ctx.sizes
    learn = {"schedule.warmup": "none", "schedule.warmup_iters": 0, "train.iterations": max(s.iterations, 2)}
    runs = {
        "fp32": ("none", False),
        "bf16": ("bf16", False),
        "fp16": ("fp16", False),
        "bf16+channels_last": ("bf16", True),
    }
    if ctx.device.type == "cpu":  # CPU fp16 convolutions take a slow path here (~80 s per 2 x 64² step)
        del runs["fp16"]
        ctx.record("fp16", "not run on CPU: no fast fp16 kernels, and GradScaler is enabled on CUDA only")
    losses: dict[str, list[float]] = {}
    for name, (amp, cl) in runs.items():
        losses[name] = _losses(seed_config("resnet50", s, amp, cl, **learn), ctx)
        ctx.record("losses", losses)
    verdicts = {}
    for name, run in losses.items():
        base = losses["bf16"] if name == "bf16+channels_last" else losses["fp32"]
        key = "fp16" if name == "fp16" else "bf16"
        tail = max(1, len(run) // 3)  # single steps diverge chaotically early on; the mean of the last third does not
        first = abs(run[0] - base[0]) / base[0]
        late = abs(sum(run[-tail:]) - sum(base[-tail:])) / sum(base[-tail:])
        worst = max(abs(a - b) / b for a, b in zip(run, base, strict=True))
        decreased = sum(run[-tail:]) / tail < run[0]
        ok = all(math.isfinite(v) for v in run) and decreased and late <= TOLERANCE["late"][key]
        ok = ok and (name == "fp32" or first <= TOLERANCE["first"]["channels_last" if "channels" in name else key])
        verdicts[name] = {"first_rel": first, "late_mean_rel": late, "max_step_rel": worst, "decreased": decreased}
        verdicts[name]["ok"] = ok
        ctx.record("verdicts", verdicts)
    ctx.record("channels_last_same_loss", _channels_last_forward(ctx))
    ctx.record("syncs_per_step", _syncs_per_step(ctx))
    ctx.record("syncbn", _syncbn_check(ctx))


def _channels_last_forward(ctx: Ctx) -> dict:
    """One fp32 forward loss, the same weights and batch, channels_last vs contiguous."""
    cfg = seed_config("resnet50", ctx.sizes)
    model = build_model(cfg.model).to(ctx.device).train()
    criterion = build_loss(cfg.loss)
    images, masks = structured_batch(0, ctx.sizes, ctx.device)
    with torch.no_grad():
        plain = float(criterion(model(images), masks))
        model = model.to(memory_format=torch.channels_last)
        cl = float(criterion(model(images.contiguous(memory_format=torch.channels_last)), masks))
    rel = abs(cl - plain) / plain
    return {"loss": plain, "loss_channels_last": cl, "rel": rel, "ok": rel <= TOLERANCE["first"]["channels_last"]}


def _syncs_per_step(ctx: Ctx) -> dict:
    """Host syncs of the engine's iteration (train_step + the window + agree), from torch's sync debug mode."""
    if ctx.device.type != "cuda":
        return {"note": "CPU: no device to wait for; tests/deeplab/test_engine_syncs.py counts the would-be syncs"}
    out = {}
    for amp in ("bf16", "fp16"):
        parts = build_parts(seed_config("resnet50", ctx.sizes, amp), one_gpu(ctx.device))
        window = LossWindow(ctx.device)
        batches = [structured_batch(i, ctx.sizes, ctx.device) for i in range(4)]
        window.add(train_step(parts, *batches[0]))  # first step: lazy inits, allocator
        agree(False, window.loss)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for images, masks in batches[1:]:
                    window.add(train_step(parts, images, masks))
                    agree(False, window.loss)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        out[amp] = len(syncs) / (len(batches) - 1)
    return out


def _syncbn_check(ctx: Ctx) -> dict:
    """A 1-rank process group (nccl on a GPU), the model converted to SyncBatchNorm, DDP forward + backward."""
    import socket

    import torch.distributed as dist

    from deeplab.norm import convert_sync_batchnorm
    from deeplab.step import _wrap_ddp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = seed_config("resnet50", ctx.sizes)
        model = convert_sync_batchnorm(build_model(cfg.model).to(ctx.device), ctx.device)
        kinds = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
        net = _wrap_ddp(model, ctx.device)
        images, masks = structured_batch(0, ctx.sizes, ctx.device)
        loss = build_loss(cfg.loss)(net(images), masks)
        loss.backward()
        grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        out = {"backend": backend, "norm_layers": kinds, "loss": float(loss), "grads_finite": bool(grads_finite)}
        if ctx.device.type == "cuda":  # at world size 1 nn.SyncBatchNorm falls back to batch_norm: call the sync path
            out.update(_sync_function_vs_batchnorm(ctx.device))
        out["ok"] = math.isfinite(out["loss"]) and grads_finite and out.get("function_ok", True)
        return out
    finally:
        dist.destroy_process_group()


def _sync_function_vs_batchnorm(device: torch.device) -> dict:
    import torch.distributed as dist
    from torch.nn.modules._functions import SyncBatchNorm as SyncFunction

    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(4, 64, 48, 48, device=device, generator=g) * 2 + 1).requires_grad_(True)
    w, b = torch.rand(64, device=device, requires_grad=True), torch.rand(64, device=device, requires_grad=True)
    upstream = torch.randn(x.shape, device=device, generator=g)
    stats = [torch.zeros(64, device=device), torch.ones(64, device=device)]
    ref_stats = [t.clone() for t in stats]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            y = SyncFunction.apply(x, w, b, *stats, 1e-5, 0.1, dist.group.WORLD, 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    grads = torch.autograd.grad((y * upstream).sum(), (x, w, b))
    ref = F.batch_norm(x, *ref_stats, w, b, True, 0.1, 1e-5)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (x, w, b))
    rel = max(float((a - c).norm() / c.norm()) for a, c in zip((y, *grads), (ref, *ref_grads), strict=True))
    syncs = sum("synchroniz" in str(c.message) for c in caught)
    return {"function_rel_diff": rel, "function_ok": rel < 1e-4, "function_forward_syncs": syncs}


def main() -> None:
    """The CPU measurement behind TOLERANCE: fp32 vs bf16 (and + channels_last), same init and batches."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    sizes = Sizes(crop=args.crop, batch=args.batch, iterations=args.iterations)
    ctx = Ctx(sizes, torch.device("cpu"), time.monotonic() + 1e9, lambda _key, _value: None)
    learn = {"schedule.warmup": "none", "schedule.warmup_iters": 0, "train.iterations": args.iterations}
    runs = {name: _losses(seed_config("resnet50", sizes, amp, cl, **learn), ctx) for name, (amp, cl) in MODES.items()}
    tail = max(1, args.iterations // 3)
    for name, run in runs.items():
        base = runs["bf16"] if name == "bf16+channels_last" else runs["fp32"]
        late = abs(sum(run[-tail:]) - sum(base[-tail:])) / sum(base[-tail:])
        worst = max(abs(a - b) / b for a, b in zip(run, base, strict=True))
        print(
            f"{name:20s} first {run[0]:.4f} (rel {abs(run[0] - base[0]) / base[0]:.1e})  last-{tail} mean "
            f"{sum(run[-tail:]) / tail:.4f} (rel {late:.3f})  worst single step rel {worst:.3f}"
        )


if __name__ == "__main__":
    main()
