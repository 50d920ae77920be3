"""Per-sample data cost on one core: PNG vs the decoded cache, the seed order whole-frame vs on the crop window,
the window order; and the CPU cores per GPU each path needs at a stated step time.

The files are written by the project's synthetic generator at 1024×2048 in the official Cityscapes layout, then
cached with ``deeplab.data.cache.build_cache`` (page-cached: just written). A sample is what a DataLoader worker
does for the engine: ``load`` (PNG: decode the image and labelIds PNGs, map ids to train ids; cache: map the
frame's files) and, unless "read only", ``TrainTransform`` of a preset with a per-sample generator: the uint8
sample the loader yields (the training step normalizes it on the GPU after the copy). "Today" is the seed order
as computed before the window and the device's normalization: ``seed_order_whole_frame``, then the CPU
normalization and int64 masks in the worker. The window's sample, normalized as the step does, is today's bit for
bit (checked on one). "+ CPU norm" normalizes the window's sample in the worker, as before. Workers run torch with one
thread, so the benchmark does too, and times CPU seconds (``time.process_time``: what a core spends, whatever
else the machine runs). The variants alternate sample by sample (ABBA); figures are medians.
Goals: (PNG + clean augment) / PNG decode <= 1.5x; the seed order from the cache >= 10x the samples/s per core
of the seed order from PNGs on the whole frame.

Cores per GPU = (images per GPU per step / step time) / (samples/s per core). The step time is the device check's
fastest ResNet-50 step (``--gpu-check gpu_check.json``), or ``--step-s``, else the fork's 0.82 s/iteration on a
V100 (fp32, 15.7 TFLOP/s) scaled by the peak of ``--device`` (an upper bound on the speed: same utilisation).

Caveat: the synthetic images carry per-pixel noise, so their PNGs (~4.3 MB) are about twice the size of real
Cityscapes frames (~2.2 MB); PNG decode is dominated by inflating the same 6 MB of pixels either way.

    python bench/bench_data.py [--quick] [--data DIR] [--device H100-tf32] [--gpu-check gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from deeplab.config import DataConfig, load_config
from deeplab.data.cache import CachedSplit, build_cache
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.normalize import Normalize, reference
from deeplab.data.synth import synthesize
from deeplab.data.transforms import TrainTransform, seed_order_whole_frame

REPO = Path(__file__).resolve().parents[1]
CLEAN, MMSEG, SEED = (f"configs/cityscapes_r50_{n}.yaml" for n in ("clean", "512x1024", "seed"))
# (source, preset or None for read only, how: "loader" (TrainTransform: uint8), "whole" (today), "cpu-normalize")
VARIANTS = {
    "png read": ("png", None, "loader"),
    "png + clean window": ("png", CLEAN, "loader"),
    "png + mmseg window": ("png", MMSEG, "loader"),
    "png + seed whole-frame": ("png", SEED, "whole"),
    "png + seed window": ("png", SEED, "loader"),
    "cache read": ("cache", None, "loader"),
    "cache + clean window": ("cache", CLEAN, "loader"),
    "cache + mmseg window": ("cache", MMSEG, "loader"),
    "cache + seed whole-frame": ("cache", SEED, "whole"),
    "cache + seed window": ("cache", SEED, "loader"),
    "cache + seed win + CPU norm": ("cache", SEED, "cpu-normalize"),
}
TODAY, GOAL_PATH = "png + seed whole-frame", "cache + seed window"
DECODE_GOAL, CACHE_GOAL = 1.5, 10.0
FORK_V100_S, V100_FP32_TFLOPS = 0.82, 15.7  # the fork's log; V100 SXM2 fp32 without tensor cores
PEAKS = {"V100": 15.7, "A100-tf32": 156.0, "A100-bf16": 312.0, "H100-tf32": 494.7, "H100-bf16": 989.4}


def datasets(data: Path | None, tmp: Path, images: int) -> dict[str, CityscapesSegmentation | CachedSplit]:
    root = data or tmp / "cityscapes"
    if not (root / "leftImg8bit").is_dir():
        synthesize(root, train=images, val=1, height=1024, width=2048, seed=0)
    build_cache(root, "train", tmp / "cache", progress="off")
    return {
        "png": CityscapesSegmentation(root, "train", max_images=images),
        "cache": CachedSplit(tmp / "cache", root, "train", max_images=images),
    }


def _runner(preset: str | None, how: str):
    if preset is None:
        return None
    cfg: DataConfig = load_config(REPO / preset).data
    if how == "whole":
        return partial(_whole_frame, cfg)
    if how == "cpu-normalize":
        return partial(_normalized, TrainTransform(cfg))
    return TrainTransform(cfg)


def _whole_frame(cfg: DataConfig, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator):
    """Today's seed order: the whole frame, then the CPU normalization and int64 masks in the worker."""
    image, mask = seed_order_whole_frame(cfg, image, mask, g)
    return reference(image, cfg.mean, cfg.std), mask.long()


def _normalized(transform: TrainTransform, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator):
    """The window's sample normalized in the worker by the CPU arithmetic (the same bits as the device's table;
    on the CPU the arithmetic is the faster of the two) and int64 masks: the window path before the device did it."""
    image, mask = transform(image, mask, g)
    return reference(image, transform.cfg.mean, transform.cfg.std), mask.long()


def same_samples(sources: dict) -> bool:
    """The seed order from the cache on the window, normalized as the step does on the device, gives today's
    sample (PNG, whole frame, normalized on the CPU), bit for bit."""
    paths = (VARIANTS[TODAY], VARIANTS[GOAL_PATH])
    runs = [(sources[source], _runner(preset, how)) for source, preset, how in paths]
    (a, a_mask), (b, b_mask) = (run(*ds.load(0), torch.Generator().manual_seed(0)) for ds, run in runs)
    cfg = load_config(REPO / SEED).data
    b, b_mask = Normalize(cfg.mean, cfg.std)(b[None])[0], b_mask.long()
    return torch.equal(a, b) and torch.equal(a_mask, b_mask)


def measure(sources: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per sample of each variant; the augmentation seed is (round, image), the same for every variant."""
    runners = {name: _runner(preset, how) for name, (_, preset, how) in VARIANTS.items()}
    names, count = list(VARIANTS), len(sources["png"])
    times: dict[str, list[float]] = {v: [] for v in names}
    for ds in sources.values():
        ds.load(0)  # warm the page cache and the decoder
    for r in range(rounds):
        for i in range(count):
            for name in names if (r * count + i) % 2 == 0 else names[::-1]:
                source, run = sources[VARIANTS[name][0]], runners[name]
                g = torch.Generator().manual_seed(r * 100_003 + i)
                tick = time.process_time()
                image, mask = source.load(i)
                if run is None:
                    image.max(), mask.max()  # touch every byte: a mapped frame is read lazily
                else:
                    run(image, mask, g)
                times[name].append(time.process_time() - tick)
    return times


def step_time(args: argparse.Namespace) -> tuple[float, str]:
    if args.step_s:
        return args.step_s, f"--step-s {args.step_s}"
    if args.gpu_check:
        results = json.loads(args.gpu_check.read_text()).get("results", {})
        modes = results.get("speed-resnet50", {}).get("results", {}).get("modes", {})
        fastest = min((m["s_per_step"] for k, m in modes.items() if k != "flops"), default=None)
        if fastest:
            return fastest, f"the device check's fastest ResNet-50 step ({args.gpu_check})"
    s = FORK_V100_S * V100_FP32_TFLOPS / PEAKS[args.device]
    return s, f"the fork's {FORK_V100_S} s/it on V100 × {V100_FP32_TFLOPS}/{PEAKS[args.device]} TFLOP/s ({args.device})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 images x 3 rounds instead of 8 x 6")
    parser.add_argument("--data", type=Path, default=None, help="reuse (or create) the synthetic dataset here")
    peak = "peak that scales the fork's step (the seed presets train in fp32: TF32)"
    parser.add_argument("--device", choices=sorted(PEAKS), default="H100-tf32", help=peak)
    parser.add_argument("--step-s", type=float, default=None, help="seconds per step (4 images per GPU)")
    parser.add_argument("--gpu-check", type=Path, default=None, help="gpu_check.json of the device check")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, rounds = (4, 3) if args.quick else (8, 6)
    with tempfile.TemporaryDirectory(prefix="bench_data.") as tmp:
        sources = datasets(args.data, Path(tmp), images)
        mb = statistics.mean(p.stat().st_size for p in sources["png"].images) / 1e6
        print(f"{images} synthetic 2048x1024 frames ({mb:.1f} MB PNG each), {rounds} rounds, 1 thread, CPU medians")
        same = "yes" if same_samples(sources) else "NO"
        print(f"{GOAL_PATH} gives {TODAY}'s sample bit for bit: {same}")
        times = measure(sources, rounds)
    step_s, source = step_time(args)
    demand = 4 / step_s  # images per GPU per second at the seed's 4 per GPU
    print(f"step {step_s:.3f} s ({source}) -> {demand:.0f} samples/s per GPU")
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'path':28s} {'ms/sample':>9s} {'samples/s/core':>14s} {'cores/GPU':>9s} {'vs today':>8s}")
    for name, s in med.items():
        print(f"{name:28s} {1000 * s:9.1f} {1 / s:14.1f} {demand * s:9.1f} {med[TODAY] / s:7.1f}x")
    ratio = med["png + clean window"] / med["png read"]
    verdict = "PASS" if ratio <= DECODE_GOAL else "FAIL"
    print(f"(png + clean augment) / png read {ratio:.2f}x (goal <= {DECODE_GOAL}x) {verdict}")
    gain = med[TODAY] / med[GOAL_PATH]
    verdict = "PASS" if gain >= CACHE_GOAL else "FAIL"
    print(f"seed order: {GOAL_PATH} vs {TODAY}: {gain:.1f}x samples/s per core (goal >= {CACHE_GOAL}x) {verdict}")


if __name__ == "__main__":
    main()
