"""Joint image/mask transforms on uint8 tensors (bilinear for images, nearest for masks).

All randomness comes from the ``torch.Generator`` passed in, so an augmented sample depends only on its seed:
exact resume and DDP equivalence rely on that. The crop window is chosen in source coordinates and only that
region is resized, which keeps augmentation cheap next to PNG decoding.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from deeplab.config import DataConfig
from deeplab.labels import IGNORE_INDEX


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator | None, high: int) -> int:
    return int(torch.randint(high, (), generator=g)) if high > 1 else 0


def _normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return TF.normalize(image.float().div_(255), list(mean), list(std))


class TrainTransform:
    """The seed's augmentation: one random scale, random crop, flip, colour jitter, normalize."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

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

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        image, mask = self._scale_crop(image, mask, g)
        if float(torch.rand((), generator=g)) < cfg.hflip:
            image, mask = image.flip(-1), mask.flip(-1)
        b, c, s = cfg.color_jitter  # factors uniform in [1 - j, 1 + j], applied in the seed's order
        if b > 0:
            image = TF.adjust_brightness(image, _uniform(g, 1 - b, 1 + b))
        if c > 0:
            image = TF.adjust_contrast(image, _uniform(g, 1 - c, 1 + c))
        if s > 0:
            image = TF.adjust_saturation(image, _uniform(g, 1 - s, 1 + s))
        return _normalize(image, cfg.mean, cfg.std), mask.long()


class EvalTransform:
    """Normalize only: evaluation runs on the whole image."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _normalize(image, self.cfg.mean, self.cfg.std), mask.long()
