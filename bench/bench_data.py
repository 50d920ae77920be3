"""Per-sample data cost: PNG decode + the full training augmentation vs decode alone, on 2048×1024 PNG files.

The files are written by the project's synthetic generator at 1024×2048 in the official Cityscapes layout. A
sample is what a DataLoader worker does for the engine: ``CityscapesSegmentation.load`` (decode the image and the
labelIds PNG, map ids to train ids) and, for the augmented variant, ``TrainTransform`` of the preset with a
per-sample generator. Workers run torch with one thread, so the benchmark does too. The variants alternate
sample by sample (ABBA); figures are medians. Goal: (decode + augment) / decode <= 1.5x.

Caveat: the synthetic images carry per-pixel noise, so their PNGs (~4.3 MB) are about twice the size of real
Cityscapes frames (~2.2 MB). Decoding is dominated by inflating and unfiltering the same 6 MB of pixels either
way (in a spot check a blurred 2.1 MB re-encode of a synthetic frame decoded no faster), so the ratio should
carry over, but it was not measured on real frames.

    python bench/bench_data.py [--quick] [--data DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from deeplab.config import load_config
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.synth import synthesize
from deeplab.data.transforms import TrainTransform

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "clean 768x768": "configs/cityscapes_r50_clean.yaml",
    "mmseg 512x1024": "configs/cityscapes_r50_512x1024.yaml",
    "seed order 768": "configs/cityscapes_r50_seed.yaml",  # whole-frame jitter and resize: fidelity, not speed
}
GOAL = 1.5
HELD_TO_GOAL = ("clean 768x768", "mmseg 512x1024")


def dataset(data: Path | None, tmp: Path, images: int) -> CityscapesSegmentation:
    root = data if data is not None and (data / "leftImg8bit").is_dir() else None
    if root is None:
        root = data or tmp / "cityscapes"
        synthesize(root, train=images, val=1, height=1024, width=2048, seed=0)
    return CityscapesSegmentation(root, "train", max_images=images)


def measure(ds: CityscapesSegmentation, rounds: int) -> dict[str, list[float]]:
    """Seconds per sample of each variant; the augmentation seed is (round, image), the same for every preset."""
    transforms = {name: TrainTransform(load_config(REPO / path).data) for name, path in PRESETS.items()}
    variants = ["decode", *transforms]
    times: dict[str, list[float]] = {v: [] for v in variants}
    ds.load(0)  # warm the page cache and the decoder
    for r in range(rounds):
        for i in range(len(ds)):
            order = variants if (r * len(ds) + i) % 2 == 0 else variants[::-1]
            for variant in order:
                g = torch.Generator().manual_seed(r * 100_003 + i)
                tick = time.perf_counter()
                image, mask = ds.load(i)
                if variant != "decode":
                    transforms[variant](image, mask, g)
                times[variant].append(time.perf_counter() - tick)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 images x 3 rounds instead of 8 x 6")
    parser.add_argument("--data", type=Path, default=None, help="reuse (or create) the synthetic dataset here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, rounds = (4, 3) if args.quick else (8, 6)
    with tempfile.TemporaryDirectory(prefix="bench_data.") as tmp:
        ds = dataset(args.data, Path(tmp), images)
        mb = statistics.mean(p.stat().st_size for p in ds.images) / 1e6
        print(f"{len(ds)} synthetic 2048x1024 frames ({mb:.1f} MB PNG each), {rounds} rounds, 1 thread, medians")
        times = measure(ds, rounds)
    decode = statistics.median(times["decode"])
    print(f"decode alone            {1000 * decode:6.1f} ms/sample")
    worst = 0.0
    for name in PRESETS:
        full = statistics.median(times[name])
        ratio = full / decode
        if name not in HELD_TO_GOAL:
            print(f"decode + {name:14s} {1000 * full:6.1f} ms/sample  ratio {ratio:.2f}x (the seed's order, no goal)")
            continue
        worst = max(worst, ratio)
        verdict = "PASS" if ratio <= GOAL else "FAIL"
        print(f"decode + {name:14s} {1000 * full:6.1f} ms/sample  ratio {ratio:.2f}x (goal <= {GOAL}x) {verdict}")
    print(f"worst (decode + augment) / decode {worst:.2f}x (goal <= {GOAL}x)")


if __name__ == "__main__":
    main()
