"""The CPU cores per GPU a data path needs: the arithmetic, and the line plan and report print."""

from __future__ import annotations

import pytest

from deeplab.config import DataConfig
from deeplab.data import cost


def test_cores_per_gpu_is_samples_per_second_times_cpu_seconds_per_sample() -> None:
    data = DataConfig(augment_order="seed", batch_size_per_gpu=4)
    assert cost.cores_per_gpu(data, 0.5) == pytest.approx(4 / 0.5 * cost.SAMPLE_CPU_S[("png", "seed")])
    cached = DataConfig(augment_order="seed", batch_size_per_gpu=4, cache="/scratch/cache")
    assert cost.cores_per_gpu(cached, 0.5) < cost.cores_per_gpu(data, 0.5)


def test_the_line_names_the_path_and_from_pngs_what_the_cache_would_need() -> None:
    png = cost.describe(DataConfig(augment_order="seed"), 0.82, "the fastest cell")
    ms = round(1000 * cost.SAMPLE_CPU_S[("png", "seed")])
    assert png.startswith(f"data: PNG decode + seed order, {ms} CPU-ms per sample")
    assert "at 0.82 s/iteration (the fastest cell" in png and "from the decoded cache" in png
    cached = cost.describe(DataConfig(augment_order="window", cache="/c"), 0.82, "x")
    assert cached.startswith("data: the decoded cache + window order") and "from the decoded cache" not in cached
