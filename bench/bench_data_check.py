"""The data check's cost: the PNG structure check before each decode, and serial vs threads vs processes.

1. ``read_png`` (chunk-CRC walk, then torchvision's ``decode_png``) vs ``decode_png`` alone, per 2048x1024 image,
   1 thread, alternating (ABBA). The walk keeps decode_png from crashing on bit rot. Goal: overhead <= 10%.
2. ``check_split`` over the same split: in-process (``workers=0``), a thread pool of ``check_pair`` and worker
   processes (``workers=N``, what ``deeplab data check`` uses), alternating A B C C B A. Threads only pay when the
   decoders release the GIL; torchvision's decode_png does not.

The images come from the project's synthetic generator at 1024x2048 (noisier, so ~2x larger than real frames).

    python bench/bench_data_check.py [--quick] [--data DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_png, read_file

from deeplab.data.check import check_pair, check_split
from deeplab.data.cityscapes import split_files
from deeplab.data.png import read_png
from deeplab.data.synth import synthesize

GOAL = 1.10


def read_overhead(images: list[Path], rounds: int) -> tuple[float, float]:
    """Median seconds of decode_png alone and of read_png (structure check + decode)."""
    variants = {
        "decode_png": lambda p: decode_png(read_file(str(p)), mode=ImageReadMode.RGB),
        "read_png": lambda p: read_png(p, ImageReadMode.RGB),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for i, image in enumerate(images):
            order = list(variants) if (r + i) % 2 == 0 else list(variants)[::-1]
            for name in order:
                tick = time.perf_counter()
                variants[name](image)
                times[name].append(time.perf_counter() - tick)
    return statistics.median(times["decode_png"]), statistics.median(times["read_png"])


def threads(root: Path, split: str, workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda pair: check_pair(*pair), split_files(root, split)))


def parallel(root: Path, split: str, workers: int, rounds: int) -> dict[str, float]:
    variants = {
        "in-process": lambda: check_split(root, split, workers=0, progress="off"),
        f"{workers} threads": lambda: threads(root, split, workers),
        f"{workers} processes": lambda: check_split(root, split, workers=workers, progress="off"),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            tick = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - tick)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 pairs, 2 rounds instead of 32 and 4")
    parser.add_argument("--data", type=Path, default=None, help="reuse (or create) the synthetic dataset here")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs, rounds = (16, 2) if args.quick else (32, 4)
    with tempfile.TemporaryDirectory(prefix="bench_data_check.") as tmp:
        root = args.data or Path(tmp) / "cityscapes"
        if not (root / "leftImg8bit").is_dir():
            synthesize(root, train=1, val=pairs, height=1024, width=2048, seed=0)
        images = [image for image, _ in split_files(root, "val")][:pairs]
        print(f"{len(images)} synthetic 2048x1024 image/label pairs, 1 torch thread, medians of {rounds} rounds")
        alone, checked = read_overhead(images, rounds)
        ratio = checked / alone
        verdict = "PASS" if ratio <= GOAL else "FAIL"
        print(f"decode_png alone {1000 * alone:6.1f} ms/image, read_png (CRC walk + decode) {1000 * checked:6.1f} ms")
        print(f"structure check overhead {ratio:.3f}x (goal <= {GOAL}x) {verdict}")
        times = parallel(root, "val", args.workers, rounds)
    base = times["in-process"]
    for name, seconds in times.items():
        print(f"check_split {name:12s} {seconds:6.2f} s  speed-up {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
