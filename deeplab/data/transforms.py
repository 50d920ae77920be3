"""Joint image/mask transforms on uint8 tensors (bilinear for images, nearest for masks).

A training sample stays uint8 (image [3, h, w], train-id mask [h, w]): the training step normalizes it on the
device after the copy, with the one normalization function (``deeplab/data/normalize.py``).
All randomness comes from the ``torch.Generator`` passed in, so an augmented sample depends only on its seed:
exact resume and DDP equivalence rely on that. By default (``augment_order: window``) the crop window is chosen in
source coordinates and only that region is resized, which keeps augmentation cheap next to PNG decoding;
``augment_order: seed`` follows the seed's order on the whole frame instead (``seed_order_whole_frame``), computed
on the input window the crop depends on (``TrainTransform._seed_order``; the same pixels, bit for bit).
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from deeplab.config import DataConfig
from deeplab.data.jitter import contrast_mean, jitter_float, scratch_buffer
from deeplab.data.normalize import Normalize
from deeplab.data.seed_window import input_window, nearest_crop, plan, resize_crop_window, seed_stages
from deeplab.labels import IGNORE_INDEX


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator | None, high: int) -> int:
    return int(torch.randint(high, (), generator=g)) if high > 1 else 0


def _jitter(image: torch.Tensor, jitter: tuple[float, float, float], g: torch.Generator | None) -> torch.Tensor:
    b, c, s = jitter  # factors uniform in [1 - j, 1 + j], applied in the seed's order
    if b > 0:
        image = TF.adjust_brightness(image, _uniform(g, 1 - b, 1 + b))
    if c > 0:
        image = TF.adjust_contrast(image, _uniform(g, 1 - c, 1 + c))
    if s > 0:
        image = TF.adjust_saturation(image, _uniform(g, 1 - s, 1 + s))
    return image


def _draw_jitter(jitter: tuple[float, float, float], g: torch.Generator | None) -> tuple[float | None, ...]:
    """The brightness, contrast and saturation factors ``_jitter`` draws, in its order (None: that one is off)."""
    return tuple(_uniform(g, 1 - j, 1 + j) if j > 0 else None for j in jitter)


def _resize_pair(image: torch.Tensor, mask: torch.Tensor, size: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's conventions: antialiased bilinear for the image, pixel-centre nearest for the mask."""
    image = TF.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
    return image, TF.resize(mask[None], size, InterpolationMode.NEAREST_EXACT)[0]


def seed_order_whole_frame(cfg: DataConfig, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator | None):
    """The seed's cityscapes.py: jitter the whole frame, flip, resize the whole image to int(side·scale),
    re-upscale it to int(side·r + 1) when smaller than the crop (its scale 0.5 ends near 0.75, resampled
    twice), then crop at int(u·(side − crop)) for u uniform in [0, 1). The reference that
    ``TrainTransform`` computes on the crop window only (tests and bench_data compare the two)."""
    ch, cw = cfg.crop_size
    image = _jitter(image, cfg.color_jitter, g)
    if float(torch.rand((), generator=g)) < cfg.hflip:
        image, mask = image.flip(-1), mask.flip(-1)
    scale = cfg.scales[_randint(g, len(cfg.scales))]
    h, w = image.shape[-2:]
    image, mask = _resize_pair(image, mask, [max(1, int(h * scale)), max(1, int(w * scale))])
    h, w = image.shape[-2:]
    if h < ch or w < cw:
        ratio = cw / w if w < h else ch / h
        if w * ratio < cw or h * ratio < ch:  # the seed's rule can leave the other side short: cover both
            ratio = max(cw / w, ch / h)
        image, mask = _resize_pair(image, mask, [int(ratio * h + 1), int(ratio * w + 1)])
        h, w = image.shape[-2:]
    if (h, w) != (ch, cw):
        left, top = int(_uniform(g, 0, 1) * (w - cw)), int(_uniform(g, 0, 1) * (h - ch))
        image, mask = image[:, top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]
    return image, mask


class TrainTransform:
    """The seed's augmentation: one random scale, random crop, flip, colour jitter, normalize."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.scratch: dict = {}  # whole-frame buffers reused between samples (contrast_mean)

    def _scale_crop(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator | None):
        cfg = self.cfg
        h, w = image.shape[-2:]
        ch, cw = cfg.crop_size
        scale = cfg.scales[_randint(g, len(cfg.scales))]
        if h * scale < ch or w * scale < cw:
            if cfg.pad_to_crop:
                return self._scale_pad_crop(image, mask, scale, g)
            scale = max(ch / h, cw / w)  # the seed upscales small images to cover the crop
        # crop window in source coordinates, then resize just that window
        src_h, src_w = min(h, round(ch / scale)), min(w, round(cw / scale))
        top, left = _randint(g, h - src_h + 1), _randint(g, w - src_w + 1)
        image = TF.resized_crop(image, top, left, src_h, src_w, [ch, cw], InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resized_crop(mask[None], top, left, src_h, src_w, [ch, cw], InterpolationMode.NEAREST)[0]
        return image, mask

    def _scale_pad_crop(self, image: torch.Tensor, mask: torch.Tensor, scale: float, g: torch.Generator | None):
        ch, cw = self.cfg.crop_size
        size = [max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale))]
        image = TF.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resize(mask[None], size, InterpolationMode.NEAREST)[0]
        pad_h, pad_w = max(0, ch - size[0]), max(0, cw - size[1])
        image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
        mask = TF.pad(mask[None], [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)[0]
        top, left = _randint(g, image.shape[-2] - ch + 1), _randint(g, image.shape[-1] - cw + 1)
        return image[:, top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]

    def _seed_order(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator | None):
        """``seed_order_whole_frame``'s result, computed on the input window the crop depends on
        (deeplab/data/seed_window.py says why it is the same, bit for bit)."""
        cfg = self.cfg
        crop = (ch, cw) = cfg.crop_size
        factors = bright, contrast, _ = _draw_jitter(cfg.color_jitter, g)
        flip = float(torch.rand((), generator=g)) < cfg.hflip
        scale = cfg.scales[_randint(g, len(cfg.scales))]
        h, w = image.shape[-2:]
        stages = seed_stages(h, w, scale, crop)
        out_h, out_w = stages[-1].size_out if stages else (h, w)
        top = left = 0
        if (out_h, out_w) != (ch, cw):
            left, top = int(_uniform(g, 0, 1) * (out_w - cw)), int(_uniform(g, 0, 1) * (out_h - ch))
        steps = plan(stages, top, left, crop)
        (r0, r1), (c0, c1) = input_window(steps, top, left, crop)
        mean = contrast_mean(image, bright, self.scratch) if contrast is not None else None
        window = image[:, r0:r1, w - c1 : w - c0].flip(-1) if flip else image[:, r0:r1, c0:c1]
        mask = nearest_crop(mask, stages, top, left, crop, flip)
        if not stages:  # the jittered window is the crop
            return jitter_float(window, factors, mean, torch.empty(window.shape, dtype=torch.uint8), self.scratch), mask
        # uint8 for torch's resize kernel, float for the band passes
        dtype = torch.uint8 if steps[0].calls is not None else torch.float32
        jittered = scratch_buffer(self.scratch, f"window_{dtype}", (3, r1 - r0, c1 - c0), dtype)
        jittered = jitter_float(window, factors, mean, jittered, self.scratch)
        return resize_crop_window(jittered, steps, top, left, crop, self.scratch), mask

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image [3, h, w] and train-id mask [h, w] of the crop (normalized on the device: normalize.py)."""
        cfg = self.cfg
        if cfg.augment_order == "seed":
            return self._seed_order(image, mask, g)
        image, mask = self._scale_crop(image, mask, g)
        if float(torch.rand((), generator=g)) < cfg.hflip:
            image, mask = image.flip(-1), mask.flip(-1)
        factors = _draw_jitter(cfg.color_jitter, g)
        mean = contrast_mean(image, factors[0], self.scratch) if factors[1] is not None else None
        out = torch.empty(image.shape, dtype=torch.uint8)
        return jitter_float(image, factors, mean, out, self.scratch), mask


class EvalTransform:
    """Normalize only (on the image's device: move the uint8 image first): evaluation runs on the whole image."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.normalize = Normalize(cfg.mean, cfg.std)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(image), mask.long()
