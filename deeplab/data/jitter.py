"""torchvision's colour jitter on uint8, computed faster to the same bits.

- brightness, and contrast once its mean is known, are functions of the value alone: one 256-entry table
  (``value_lut``, torchvision's own operations on the 256 values), applied by PIL's table lookup;
- contrast's mean is the mean grey level of the whole brightness-adjusted frame: the same float32 operations on
  the same values into a tensor of the same shape, so torch's reduction sees what it sees in torchvision;
- saturation blends each pixel with its floored grey level: torchvision's float32 operations, on rows kept in float
  (``jitter_float``) so the resize and normalization that follow skip the uint8 round trips.
Every float step is elementwise, so it is computed a band of rows at a time, while the band is in the CPU's cache.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

CHUNK = 1 << 16  # pixels per band of rows: a few float32 planes of it stay in a core's L2 cache
GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def value_lut(brightness: float | None, contrast: float | None, mean: torch.Tensor | None) -> torch.Tensor:
    """What ``TF.adjust_brightness`` then ``TF.adjust_contrast`` (toward ``mean``) make of each uint8 value: both
    are functions of the value alone, computed here by the same operations on the 256 values."""
    lut = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    if brightness is not None:
        lut = TF.adjust_brightness(lut, brightness)
    if contrast is not None:
        lut = blend_contrast(lut, mean, contrast)
    return lut.view(-1)


def blend_contrast(image: torch.Tensor, mean: torch.Tensor, factor: float) -> torch.Tensor:
    """``TF.adjust_contrast``'s blend of a uint8 image toward a given mean."""
    return image.mul(float(factor)).add_(mean, alpha=1.0 - float(factor)).clamp_(0, 255).to(image.dtype)


def apply_lut(image: torch.Tensor, lut: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``lut[image]`` for a uint8 image through PIL's table lookup (several times faster than torch's float
    arithmetic or its int64 indexing); into ``out`` (same shape, contiguous) when given."""
    src = image.contiguous().numpy().reshape(-1, image.shape[-1])
    out = torch.empty(image.shape, dtype=torch.uint8) if out is None else out
    dst = out.numpy().reshape(src.shape)
    table = lut.tolist()
    (h, w), first, last = src.shape, table[src[0, 0]], table[src[-1, -1]]
    mapped = Image.frombuffer("L", (w, h), src, "raw", "L", 0, 1).point(table)
    dst[0, 0], dst[-1, -1] = 255 - first, 255 - last  # a paste that misses dst leaves these wrong
    Image.frombuffer("L", (w, h), dst, "raw", "L", 0, 1).im.paste(mapped.im, (0, 0, w, h))
    if dst[0, 0] != first or dst[-1, -1] != last:  # this Pillow copied the buffer instead of mapping it
        dst[...] = np.asarray(mapped)
    return out


def scratch_buffer(scratch: dict | None, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A buffer kept in ``scratch`` (one per worker) between samples, grown when needed: fresh buffers of
    megabytes cost page faults."""
    numel = int(np.prod(shape))
    if scratch is None:
        return torch.empty(shape, dtype=dtype)
    buffer = scratch.get(key)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
        buffer = scratch[key] = torch.empty(numel, dtype=dtype)
    return buffer[:numel].view(shape)


def _band_rows(width: int) -> int:
    return max(1, CHUNK // width)


def contrast_mean(image: torch.Tensor, brightness: float | None, scratch: dict | None = None) -> torch.Tensor:
    """The mean grey level ``TF.adjust_contrast`` blends toward, of the whole (brightness-adjusted) frame: the
    same grey values in a [1, H, W] float32 tensor as torchvision's, hence the same mean. Brightness is applied in
    float32 here (torchvision's multiply and clamp, then the truncation its uint8 result makes): a band of rows
    stays in cache from the uint8 pixels to its grey levels."""
    h, w = image.shape[-2:]
    grey = scratch_buffer(scratch, "grey", (1, h, w), torch.float32)
    step = _band_rows(w)
    rows = scratch_buffer(scratch, "grey_rows", (3, step, w), torch.float32)
    for r0 in range(0, h, step):
        band = rows[:, : min(step, h - r0)].copy_(image[:, r0 : r0 + step])
        if brightness is not None:  # v·b ≥ 0, and ≤ 255 unless b > 1
            band = band.mul_(float(brightness)).clamp_(max=255) if brightness > 1 else band.mul_(float(brightness))
            band.floor_()
        r, g, b = band.unbind(dim=-3)
        level = torch.mul(r, GREY[0], out=grey[0, r0 : r0 + step])
        level.add_(g, alpha=GREY[1]).add_(b, alpha=GREY[2]).floor_()
    return torch.mean(grey, dim=(-3, -2, -1), keepdim=True)


def jitter_float(
    image: torch.Tensor,
    factors: tuple[float | None, ...],
    mean: torch.Tensor | None,
    out: torch.Tensor | None = None,
    scratch: dict | None = None,
) -> torch.Tensor:
    """torchvision's brightness, contrast (toward ``mean``, the grey mean of the image it would see) and saturation
    of a uint8 [3, H, W] image, by drawn ``factors`` (None: off), holding the uint8 values torchvision gives: as
    float32 (the seed order resizes them next), or into ``out`` as uint8 when ``out`` is uint8 (a finished sample)."""
    bright, contrast, saturation = factors
    h, w = image.shape[-2:]
    out = torch.empty(3, h, w) if out is None else out
    to_bytes = out.dtype == torch.uint8
    if bright is not None or contrast is not None:
        lut = value_lut(bright, contrast, mean)
        done = to_bytes and saturation is None  # the table's output is the sample
        target = out if done else scratch_buffer(scratch, "jitter", tuple(image.shape), torch.uint8)
        image = apply_lut(image, lut, target)
    if to_bytes and saturation is None:
        return out if image is out else out.copy_(image)
    step = _band_rows(w)
    grey = scratch_buffer(scratch, "saturation_grey", (step, w), torch.float32)
    band = scratch_buffer(scratch, "saturation_rows", (3, step, w), torch.float32) if to_bytes else None
    for r0 in range(0, h, step):
        n = min(step, h - r0)
        rows = (band[:, :n] if to_bytes else out[:, r0 : r0 + n]).copy_(image[:, r0 : r0 + n])  # float ops beat mixed
        if saturation is not None:  # TF.adjust_saturation: blend with the floored grey level, clamp, truncate
            r, g, b = rows.unbind(0)
            level = torch.mul(r, GREY[0], out=grey[:n]).add_(g, alpha=GREY[1]).add_(b, alpha=GREY[2])
            rows.mul_(float(saturation)).add_(level.floor_(), alpha=1.0 - float(saturation))
            if saturation > 1:  # else a convex blend of values in [0, 255]: within [0, 256), truncated alike
                rows.clamp_(0, 255)
            if not to_bytes:
                rows.floor_()  # the truncation of torchvision's uint8 result (a cast to uint8 does it below)
        if to_bytes:
            out[:, r0 : r0 + n].copy_(rows)
    return out
