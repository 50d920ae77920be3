"""CPU cost of a training sample by data path, and the CPU cores per GPU a run therefore needs.

Figures: CPU seconds per sample on one core (torch at 1 thread, as in a DataLoader worker), full-size 2048×1024
synthetic frames, 768² crops: ``python bench/bench_data.py --data D`` of 2026-12-03 21:30 UTC, load 1.3-2.6 on a
shared 2-core machine (bench/README.md). A sample is the uint8 crop the loader yields (the training step normalizes
it on the GPU). The seed order is computed on the crop window (``TrainTransform``); on the whole frame with the CPU
normalization it cost 0.14-0.18 s from PNG, 0.06-0.11 s cached.
"""

from __future__ import annotations

from dataclasses import replace

from deeplab.config import DataConfig

SAMPLE_CPU_S = {  # (source, augment_order) → CPU seconds per sample
    ("png", "seed"): 0.087,
    ("png", "window"): 0.079,
    ("cache", "seed"): 0.012,
    ("cache", "window"): 0.009,
}
FORK_V100_S_PER_IT = 0.82  # the seed fork: res50, 4 × 768² per GPU, 2 V100, fp32


def data_source(data: DataConfig) -> str:
    return "cache" if data.cache else "png"


def sample_cpu_s(data: DataConfig) -> float:
    """CPU seconds one sample of this data config costs on one core."""
    return SAMPLE_CPU_S[(data_source(data), data.augment_order)]


def cores_per_gpu(data: DataConfig, s_per_it: float) -> float:
    """CPU cores that keep one GPU fed at ``s_per_it`` seconds per iteration (its batch per GPU each time)."""
    return data.batch_size_per_gpu / s_per_it * sample_cpu_s(data)


def describe(data: DataConfig, s_per_it: float, where: str) -> str:
    """One line: the data path, its CPU cost per sample and the cores per GPU at ``s_per_it`` (``where`` says whose);
    from PNGs, what the decoded cache would need instead."""
    path = f"{'the decoded cache' if data.cache else 'PNG decode'} + {data.augment_order} order"
    line = (
        f"data: {path}, {1000 * sample_cpu_s(data):.0f} CPU-ms per sample → {cores_per_gpu(data, s_per_it):.1f} "
        f"CPU cores per GPU at {s_per_it:.3g} s/iteration ({where}; bench/bench_data.py)"
    )
    if not data.cache:
        cached = replace(data, cache="cache")
        line += (
            f"; from the decoded cache (`deeplab data cache`) {1000 * sample_cpu_s(cached):.0f} CPU-ms, "
            f"{cores_per_gpu(cached, s_per_it):.1f} cores"
        )
    return line
