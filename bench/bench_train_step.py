"""Training-step throughput on CPU: our DeepLabV3Plus vs segmentation_models_pytorch 0.6.0's DeepLabV3Plus.

Both take one forward + backward + SGD step on the same batch with the engine's loss (the seed recipe's OHEM),
fp32 and bf16 autocast, ResNet-50 and ResNet-101 at output stride 16. Ours is built from the seed configs the
way the engine builds it; smp's with ``encoder_weights=None``. The two models alternate (ABBA) so that load from
other processes hits both alike; the figures are medians of wall-clock time (process CPU time as a cross-check).
Goal: ours/smp throughput >= 1.0x.

One torch thread by default: on a shared 2-core machine two threads oversubscribe the cores and a step slowed
down ~7x with ratios swinging between 0.64x and 1.01x from one configuration to the next; `--threads 0` keeps
torch's choice.

The two are not the same network: ours follows the seed recipe (dense 3×3 atrous ASPP convs, two dense 3×3
decoder convs, no image pooling), smp uses depthwise-separable ASPP and decoder convs (plus image pooling), so
ours costs about twice smp's forward FLOPs. Hence the FLOP-normalised ratio (GFLOP/s ours/smp) is printed too.
Step FLOPs are 3× the forward FLOPs counted by torch.utils.flop_counter: its backward formula ignores conv
groups and counts a depthwise conv's backward as a dense one (torch 2.14), which would inflate smp's figure.

    python bench/bench_train_step.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deeplab.config import Config, load_config
from deeplab.evaluate import autocast
from deeplab.loss import build_loss
from deeplab.model import build_model
from deeplab.schedule import build_optimizer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"resnet50": "configs/cityscapes_r50_clean.yaml", "resnet101": "configs/cityscapes_r101_clean.yaml"}
GOAL = 1.0
CPU = torch.device("cpu")


def seed_config(backbone: str, amp: str) -> Config:
    return load_config(REPO / CONFIGS[backbone], ["model.weights=none", f"train.amp={amp}", "train.device=cpu"])


def ours(cfg: Config) -> nn.Module:
    model = build_model(cfg.model)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def theirs(cfg: Config) -> nn.Module:
    return smp.DeepLabV3Plus(
        encoder_name=cfg.model.backbone, encoder_weights=None, encoder_output_stride=16, classes=cfg.model.num_classes
    )


def train_step(model: nn.Module, cfg: Config) -> Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]:
    """The engine's step (autocast forward, fp32 loss, backward, SGD) as a function returning (wall, CPU) seconds."""
    model.train()
    optimizer = build_optimizer(model, cfg.optim)
    criterion = build_loss(cfg.loss)

    def step(images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
        tick, cpu = time.perf_counter(), time.process_time()
        with autocast(CPU, cfg.train.amp):
            logits = model(images)
        loss = criterion(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - tick, time.process_time() - cpu

    return step


def forward_flops(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """Forward FLOPs in total and per top-level child, counted on a meta-device copy (nothing is computed)."""
    meta = copy.deepcopy(model).to("meta")
    counter = FlopCounterMode(display=False, depth=2)
    with counter, torch.no_grad():
        meta(torch.empty(shape, device="meta"))
    counts = counter.get_flop_counts()  # keys "Global", "<Model>", "<Model>.<child>", "<Model>.<child>.<grandchild>"
    children = {k.split(".")[1]: sum(v.values()) for k, v in counts.items() if k.count(".") == 1}
    return {"total": counter.get_total_flops(), **children}


def batch(cfg: Config, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(shape, generator=g)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, cfg.model.num_classes, (shape[0], *shape[2:]), generator=g)
    masks[:, :8] = 255  # some void, as in real labels
    return images, masks


def compare(backbone: str, amp: str, shape: tuple[int, ...], steps: int) -> float:
    """Alternate the two models' steps; print medians and ratios; return ours/smp wall-clock throughput."""
    cfg = seed_config(backbone, amp)
    torch.manual_seed(0)
    models = {"ours": ours(cfg), "smp": theirs(cfg)}
    flops = {name: 3 * forward_flops(m, shape)["total"] for name, m in models.items()}
    steps_of = {name: train_step(m, cfg) for name, m in models.items()}
    images, masks = batch(cfg, shape)
    for step in steps_of.values():  # warm-up: allocator, oneDNN kernel selection
        step(images, masks)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for i in range(steps):
        for name in ("ours", "smp") if i % 2 == 0 else ("smp", "ours"):
            w, c = steps_of[name](images, masks)
            wall[name].append(w)
            cpu[name].append(c)
    med = {name: statistics.median(t) for name, t in wall.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    ratio = med["smp"] / med["ours"]
    rate = {n: flops[n] / med[n] / 1e9 for n in med}
    parts = [f"{n} {med[n]:6.2f} s/step {rate[n]:5.1f} GFLOP/s" for n in med]
    print(
        f"{backbone:9s} {amp:4s} | {' | '.join(parts)} | ours/smp throughput {ratio:.2f}x "
        f"({'PASS' if ratio >= GOAL else 'FAIL'}; CPU-time {med_cpu['smp'] / med_cpu['ours']:.2f}x), "
        f"per FLOP {rate['ours'] / rate['smp']:.2f}x",
        flush=True,
    )
    return ratio


def describe_flops(shape: tuple[int, ...]) -> None:
    for backbone in CONFIGS:
        cfg = seed_config(backbone, "none")
        parts = []
        for name, model in (("ours", ours(cfg)), ("smp", theirs(cfg))):
            f = forward_flops(model, shape)
            inner = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in f.items() if k != "total")
            parts.append(f"{name} {f['total'] / 1e9:.0f} ({inner})")
        print(f"{backbone:9s} forward GFLOP: {'; '.join(parts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128x256 crops, 3 timed steps per model")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 4, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 = torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (2, 3, 128, 256) if args.quick else (2, 3, 256, 512)
    steps = args.steps or (3 if args.quick else 4)
    print(
        f"train step, batch {'x'.join(map(str, shape))}, {torch.get_num_threads()} threads, {steps} timed steps "
        f"per model (alternating), medians; goal ours/smp throughput >= {GOAL:.1f}x"
    )
    describe_flops(shape)
    ratios = [compare(b, amp, shape, steps) for b in CONFIGS for amp in ("none", "bf16")]
    print(f"worst ours/smp throughput {min(ratios):.2f}x (goal >= {GOAL:.1f}x)")


if __name__ == "__main__":
    main()
