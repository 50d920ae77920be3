"""The seed order on the crop window only equals the whole-frame pipeline, bit for bit; so do its parts, and the
window order equals torchvision's operations.

Tolerance: none. Every step is integer-exact or the same float32 operation on the same value: the uint8 resize is
torch's integer arithmetic (its weights recomputed, each sum exact), nearest is a gather with torch's own indices,
the jitter is elementwise, and contrast's mean is computed on the whole frame by the same operations.
"""

from __future__ import annotations

import random

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from deeplab.config import DataConfig, load_config
from deeplab.data.band_resize import pass_weights, resize_height, resize_width, torch_resize, window_call
from deeplab.data.jitter import apply_lut, contrast_mean, jitter_float
from deeplab.data.normalize import Normalize, reference
from deeplab.data.seed_window import plan, seed_stages
from deeplab.data.transforms import TrainTransform, _draw_jitter, _jitter, seed_order_whole_frame

REPO_SEED_PRESET = "configs/cityscapes_r50_seed.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    """As in a DataLoader worker: torch's parallel regions over small windows only wait on a loaded machine (2
    threads on the 2 shared cores made this module 9x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _frame(h: int, w: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    noise = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    if rng.random() < 0.5:  # smooth content too: values near the clamp ends and flat regions
        coarse = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=gen) * 300 - 20
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear").clamp(0, 255)
        noise = smooth[0].round().to(torch.uint8)
    return noise, torch.randint(0, 256, (h, w), dtype=torch.uint8, generator=gen)


def _assert_same(cfg: DataConfig, image: torch.Tensor, mask: torch.Tensor, seed: int) -> None:
    whole_image, whole_mask = seed_order_whole_frame(cfg, image, mask, torch.Generator().manual_seed(seed))
    window = TrainTransform(cfg)(image, mask, torch.Generator().manual_seed(seed))
    where = f"frame {tuple(image.shape)}, crop {cfg.crop_size}, scales {cfg.scales}, jitter {cfg.color_jitter}"
    assert window[0].dtype == window[1].dtype == torch.uint8, where
    assert torch.equal(whole_image, window[0]), f"image differs: {where}, seed {seed}"
    assert torch.equal(whole_mask, window[1]), f"mask differs: {where}, seed {seed}"
    # as trained: the step's normalization of the window's sample is the whole frame's CPU normalization
    normalized = Normalize(cfg.mean, cfg.std)(window[0][None])[0]
    assert torch.equal(normalized, reference(whole_image, cfg.mean, cfg.std)), f"normalized differs: {where}"


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
        stages = seed_stages(1024, 2048, scale, preset.crop_size)
        if stages:  # the fast path is the one taken: torch's kernel on the window for the first resize
            out_h, out_w = stages[-1].size_out
            for top, left in ((0, 0), (out_h - 768, out_w - 768), ((out_h - 768) // 3, (out_w - 768) // 2)):
                assert plan(stages, top, left, preset.crop_size)[0].calls is not None, (scale, top, left)


def test_jitter_float_equal_torchvisions_jitter() -> None:
    # brightness and contrast as one value table, the mean as torchvision's, saturation in float32
    rng = random.Random(11)
    for seed in range(40):
        image, _ = _frame(rng.randint(1, 160), rng.randint(1, 300), rng)
        jitter = tuple(rng.choice([0.0, 0.3, 0.5, 0.9]) for _ in range(3))
        expected = _jitter(image, jitter, torch.Generator().manual_seed(seed))
        factors = _draw_jitter(jitter, torch.Generator().manual_seed(seed))
        mean = contrast_mean(image, factors[0]) if factors[1] is not None else None
        assert torch.equal(jitter_float(image, factors, mean), expected.float()), (tuple(image.shape), jitter, seed)
        into_bytes = jitter_float(image, factors, mean, torch.empty_like(image), {})  # a finished sample: uint8
        assert torch.equal(into_bytes, expected), (tuple(image.shape), jitter, seed)


def test_band_passes_equal_torchs_resize_on_random_sizes_and_windows() -> None:
    rng = random.Random(5)
    for _ in range(120):
        n_in, n_out = rng.randint(1, 2500), rng.randint(1, 4500)
        if n_in == n_out:
            continue
        image = torch.randint(0, 256, (3, 2, n_in), dtype=torch.uint8, generator=torch.Generator().manual_seed(n_in))
        if rng.random() < 0.2:
            image.fill_(255)  # sums of weights above 2^p round to 256: clamped
        o0 = rng.randrange(n_out)
        o1 = rng.randint(o0 + 1, n_out)
        first, last = rng.randint(0, n_in // 3), rng.randint(2 * n_in // 3, n_in)
        needed = pass_weights(n_in, n_out)
        lo, hi = int(needed[0][o0:o1].min()), int((needed[0] + needed[1])[o0:o1].max())
        first, last = min(first, lo), max(last, hi)  # a window holding every input the kept outputs read
        window = image[..., first:last].float().contiguous()
        expected = TF.resize(image, [2, n_out], InterpolationMode.BILINEAR, antialias=True)
        assert torch.equal(resize_width(window, n_in, n_out, first, (o0, o1)), expected[..., o0:o1].float())
        window, expected = window.transpose(1, 2).contiguous(), expected.transpose(1, 2)  # rows and columns swapped
        assert torch.equal(resize_height(window, n_in, n_out, first, (o0, o1)), expected[:, o0:o1].float())


def test_window_calls_equal_torchs_resize_on_random_sizes_and_windows() -> None:
    # torch's own kernel on an input window, where window_call finds one, gives the whole resize's kept outputs
    rng, found = random.Random(8), 0
    for _ in range(150):
        n_in, n_out = rng.randint(2, 1200), rng.choice([rng.randint(1, 2400), 0])
        n_out = n_out or n_in * rng.choice([1, 2, 3, 5, 7]) // rng.choice([1, 2, 4, 8])  # the preset's kind of ratio
        if n_out < 1 or n_in == n_out:
            continue
        image = torch.randint(0, 256, (3, 2, n_in), dtype=torch.uint8, generator=torch.Generator().manual_seed(n_in))
        if rng.random() < 0.2:
            image.fill_(255)
        o0 = rng.randrange(n_out)
        o1 = rng.randint(o0 + 1, n_out)
        call = window_call(n_in, n_out, (o0, o1))
        if call is None:
            continue
        found += 1
        assert call.a <= o0 and o1 <= call.b and 0 <= call.i0 < call.i1 <= n_in
        expected = TF.resize(image, [2, n_out], InterpolationMode.BILINEAR, antialias=True)[..., o0:o1]
        got = torch_resize(image[..., call.i0 : call.i1].contiguous(), window_call(2, 2, (0, 2)), call)
        assert torch.equal(got[..., o0 - call.a : o1 - call.a], expected), (n_in, n_out, o0, o1)
        rows = torch_resize(image.transpose(1, 2)[:, call.i0 : call.i1].contiguous(), call, window_call(2, 2, (0, 2)))
        assert torch.equal(rows[:, o0 - call.a : o1 - call.a], expected.transpose(1, 2)), (n_in, n_out, o0, o1)
    assert found > 40


def test_window_order_equals_torchvisions_operations() -> None:
    rng = random.Random(3)
    for preset in ("clean", "512x1024", "seed"):
        data = load_config(f"configs/cityscapes_r50_{preset}.yaml").data
        cfg = DataConfig(**{**data.__dict__, "augment_order": "window", "crop_size": (48, 64)})
        transform = TrainTransform(cfg)
        for seed in range(6):
            image, mask = _frame(rng.randint(40, 120), rng.randint(60, 200), rng)
            g = torch.Generator().manual_seed(seed)
            crop, crop_mask = transform._scale_crop(image, mask, g)
            if float(torch.rand((), generator=g)) < cfg.hflip:
                crop, crop_mask = crop.flip(-1), crop_mask.flip(-1)
            expected = _jitter(crop, cfg.color_jitter, g), crop_mask
            got = transform(image, mask, torch.Generator().manual_seed(seed))
            assert got[0].dtype == got[1].dtype == torch.uint8
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), (preset, seed)


def test_the_value_table_lands_in_the_output_even_when_pillow_copies_the_buffer(monkeypatch) -> None:
    image, _ = _frame(40, 70, random.Random(2))
    lut = torch.randperm(256, generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    expected = lut[image.long()]
    assert torch.equal(apply_lut(image, lut), expected)
    mapped_calls = []

    def copying_frombuffer(mode, size, data, *args):  # a Pillow whose images never share the caller's memory
        mapped_calls.append(mode)
        return Image.frombytes(mode, size, bytes(memoryview(data)))

    monkeypatch.setattr(Image, "frombuffer", copying_frombuffer)
    assert torch.equal(apply_lut(image, lut, torch.zeros_like(image)), expected) and len(mapped_calls) == 2
