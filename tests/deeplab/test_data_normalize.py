"""One normalization function: the table lookup equals the CPU arithmetic every sample had before, bit for bit,
and is what the training step and the evaluator apply on the device (here the CPU; on a GPU bench/gpu_check.py's
data section checks it)."""

from __future__ import annotations

import pytest
import torch

from deeplab.config import DataConfig
from deeplab.data.normalize import Normalize, normalize, normalize_table, reference
from deeplab.data.transforms import EvalTransform
from deeplab.step import device_batch


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mean_std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.0,) * 3, (1.0,) * 3)])
def test_the_table_lookup_equals_the_cpu_arithmetic(mean_std: tuple) -> None:
    mean, std = mean_std
    table = normalize_table(mean, std)
    every_value = torch.arange(256, dtype=torch.uint8).repeat(3, 7, 1)  # each value at several positions
    for images in (every_value, _images(3, 37, 53), _images(2, 3, 24, 40, seed=1)):
        got = normalize(images, table)
        assert got.dtype == torch.float32 and got.shape == images.shape
        assert torch.equal(got, reference(images, mean, std)), tuple(images.shape)


def test_the_step_and_the_evaluator_apply_it_on_the_device() -> None:
    cfg = DataConfig()
    norm = Normalize(cfg.mean, cfg.std)
    images, masks = _images(2, 3, 16, 24), _images(2, 16, 24, seed=2)
    x, y = device_batch(images, masks, torch.device("cpu"), norm, channels_last=True)
    assert torch.equal(x, reference(images, cfg.mean, cfg.std)) and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and torch.equal(y, masks.long())
    already = torch.randn(2, 3, 16, 24)  # a float batch is taken as normalized
    assert device_batch(already, masks, torch.device("cpu"), norm, channels_last=False)[0] is already
    image, mask = EvalTransform(cfg)(images[0][None], masks[0])
    assert torch.equal(image[0], reference(images[0], cfg.mean, cfg.std)) and mask.dtype == torch.int64
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.float(), norm.table)
