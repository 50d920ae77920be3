"""The seed order on the crop window only equals the whole-frame pipeline, bit for bit.

Tolerance: none. Every step is integer-exact or the same float32 operation on the same value: the uint8 resize
is torch's own kernel (integer weights fixed by the sizes), nearest is a gather with torch's own indices, the
jitter is elementwise, and contrast's mean is computed on the whole frame by the same operations.
"""

from __future__ import annotations

import random

import pytest
import torch

from deeplab.config import DataConfig, load_config
from deeplab.data.seed_window import contrast_mean
from deeplab.data.transforms import TrainTransform, _draw_jitter, _jitter, _jitter_by_table, seed_order_whole_frame

REPO_SEED_PRESET = "configs/cityscapes_r50_seed.yaml"


def _frame(h: int, w: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    noise = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    if rng.random() < 0.5:  # smooth content too: values near the clamp ends and flat regions
        coarse = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=gen) * 300 - 20
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear").clamp(0, 255)
        noise = smooth[0].round().to(torch.uint8)
    return noise, torch.randint(0, 256, (h, w), dtype=torch.uint8, generator=gen)


def _assert_same(cfg: DataConfig, image: torch.Tensor, mask: torch.Tensor, seed: int) -> None:
    whole = seed_order_whole_frame(cfg, image, mask, torch.Generator().manual_seed(seed))
    window = TrainTransform(cfg)._seed_order(image, mask, torch.Generator().manual_seed(seed))
    where = f"frame {tuple(image.shape)}, crop {cfg.crop_size}, scales {cfg.scales}, jitter {cfg.color_jitter}"
    assert torch.equal(whole[0], window[0]), f"image differs: {where}, seed {seed}"
    assert torch.equal(whole[1], window[1]), f"mask differs: {where}, seed {seed}"


@pytest.mark.parametrize("case", range(6))
def test_window_equals_whole_frame_on_random_frames_scales_and_crops(case: int) -> None:
    rng = random.Random(case)
    for _ in range(8):
        h, w = rng.randint(64, 256), rng.randint(128, 512)
        image, mask = _frame(h, w, rng)
        crop = (rng.randint(16, min(h + 64, 300)), rng.randint(16, min(w + 64, 400)))
        cfg = DataConfig(
            crop_size=crop,
            scales=tuple(rng.choice([0.33, 0.5, 0.61, 0.75, 1.0, 1.25, 1.37, 1.5, 1.75, 2.0, 2.4]) for _ in range(3)),
            augment_order="seed",
            hflip=0.5,
            color_jitter=tuple(rng.choice([0.0, 0.3, 0.5, 0.9]) for _ in range(3)),
        )
        for seed in range(2):
            _assert_same(cfg, image, mask, rng.randrange(2**31) + seed)


def test_window_equals_whole_frame_at_cityscapes_size_for_every_preset_scale() -> None:
    preset = load_config(REPO_SEED_PRESET).data
    image, mask = _frame(1024, 2048, random.Random(7))
    for i, scale in enumerate(preset.scales):  # every scale of the preset, one generator each
        cfg = DataConfig(**{**preset.__dict__, "scales": (scale,)})
        _assert_same(cfg, image, mask, seed=i)


def test_jitter_by_table_equals_torchvisions_jitter() -> None:
    # the window order's jitter of the crop: brightness and contrast as one value table, the mean as torchvision's
    rng = random.Random(11)
    for seed in range(40):
        image, _ = _frame(rng.randint(16, 160), rng.randint(16, 300), rng)
        jitter = tuple(rng.choice([0.0, 0.3, 0.5, 0.9]) for _ in range(3))
        expected = _jitter(image, jitter, torch.Generator().manual_seed(seed))
        factors = _draw_jitter(jitter, torch.Generator().manual_seed(seed))
        mean = contrast_mean(image, factors[0]) if factors[1] is not None else None
        assert torch.equal(_jitter_by_table(image, factors, mean), expected), (tuple(image.shape), jitter, seed)
