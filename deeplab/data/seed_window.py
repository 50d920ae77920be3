"""The seed order's augmentation computed on the crop window only, bit for bit what the whole frame gives.

The seed order jitters the whole frame, flips it, resizes it (antialiased bilinear; a second, upscaling resize
when it ends smaller than the crop) and crops. Every step but one is local, so only the input window the crop
depends on is processed:
- brightness and saturation are per pixel: they commute with cropping; brightness, and contrast once its mean
  is known, are functions of the value alone, applied as one 256-entry table (computed by torchvision's own
  operations on the 256 values);
- contrast blends every pixel with the mean grey level of the brightness-adjusted frame: that one statistic is
  computed on the whole frame, with torchvision's own operations on the same shapes (so the same float32
  reduction), and the blend then runs on the window;
- torch's uint8 resize is separable (a horizontal pass over whole rows, then a vertical pass over whole
  columns) in integer arithmetic with weights fixed by the input and output sizes alone: the window's rows are
  resized horizontally at the frame's full width, its columns vertically at the frame's full height, with
  zeros where the frame lies outside the window (outside every needed output's support, so never read);
- nearest (the masks) is a gather: its row and column indices are torch's own, from resizing an index ramp.
tests/deeplab/test_data_seed_window.py pins the equality on random frames, scales and crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

_MARGIN = 3  # input pixels beyond the support bound (torch rounds the support's ends to the nearest pixel)


@dataclass(frozen=True)
class Stage:
    """One resize of the chain: (height, width) in and out."""

    size_in: tuple[int, int]
    size_out: tuple[int, int]


def seed_stages(h: int, w: int, scale: float, crop: tuple[int, int]) -> list[Stage]:
    """The seed order's resizes of an h×w frame: by ``scale``, then up to cover the crop (transforms.py)."""
    ch, cw = crop
    size = (max(1, int(h * scale)), max(1, int(w * scale)))
    stages = [Stage((h, w), size)]
    h1, w1 = size
    if h1 < ch or w1 < cw:
        ratio = cw / w1 if w1 < h1 else ch / h1
        if w1 * ratio < cw or h1 * ratio < ch:
            ratio = max(cw / w1, ch / h1)
        stages.append(Stage(size, (int(ratio * h1 + 1), int(ratio * w1 + 1))))
    return [s for s in stages if s.size_in != s.size_out]


def _needed(lo: int, hi: int, n_in: int, n_out: int) -> tuple[int, int]:
    """Input interval [a, b) that outputs [lo, hi) of an antialiased bilinear n_in → n_out resize read."""
    if n_in == n_out:
        return lo, hi
    scale = n_in / n_out
    support = max(scale, 1.0)
    a = math.floor((lo + 0.5) * scale - support) - _MARGIN
    b = math.ceil((hi - 0.5) * scale + support) + _MARGIN
    return max(0, a), min(n_in, b)


def _resize_rows(win: torch.Tensor, first: int, n_in: int, n_out: int, keep: tuple[int, int]) -> torch.Tensor:
    """Width pass: rows of ``win`` (columns ``first``.. of an n_in-wide frame) → output columns ``keep``."""
    if n_in == n_out:
        return win[:, :, keep[0] - first : keep[1] - first]
    full = win.new_zeros(win.shape[0], win.shape[1], n_in)
    full[:, :, first : first + win.shape[2]] = win
    out = TF.resize(full, [win.shape[1], n_out], InterpolationMode.BILINEAR, antialias=True)
    return out[:, :, keep[0] : keep[1]]


def _resize_cols(win: torch.Tensor, first: int, n_in: int, n_out: int, keep: tuple[int, int]) -> torch.Tensor:
    """Height pass: columns of ``win`` (rows ``first``.. of an n_in-high frame) → output rows ``keep``."""
    if n_in == n_out:
        return win[:, keep[0] - first : keep[1] - first]
    full = win.new_zeros(win.shape[0], n_in, win.shape[2])
    full[:, first : first + win.shape[1]] = win
    out = TF.resize(full, [n_out, win.shape[2]], InterpolationMode.BILINEAR, antialias=True)
    return out[:, keep[0] : keep[1]]


def _windows(stages: list[Stage], top: int, left: int, crop: tuple[int, int]) -> list[tuple[tuple[int, int], ...]]:
    """(rows, cols) each stage's input must hold, first stage first; the last entry is the crop itself."""
    rows, cols = (top, top + crop[0]), (left, left + crop[1])
    windows = [(rows, cols)]
    for stage in reversed(stages):
        (hi, wi), (ho, wo) = stage.size_in, stage.size_out
        rows, cols = _needed(*rows, hi, ho), _needed(*cols, wi, wo)
        windows.append((rows, cols))
    return windows[::-1]


def resize_crop_window(
    window: torch.Tensor, stages: list[Stage], top: int, left: int, crop: tuple[int, int]
) -> torch.Tensor:
    """The crop at (top, left) of the image the stages make, from ``window`` = ``input_window(...)`` of the frame."""
    windows = _windows(stages, top, left, crop)
    for stage, (rows, cols), (next_rows, next_cols) in zip(stages, windows[:-1], windows[1:], strict=True):
        (hi, wi), (ho, wo) = stage.size_in, stage.size_out
        # keep every column the next stage reads, over this stage's input rows; then resize those columns
        window = _resize_rows(window, cols[0], wi, wo, next_cols)
        window = _resize_cols(window, rows[0], hi, ho, next_rows)
    return window


def input_window(stages: list[Stage], top: int, left: int, crop: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """(rows, cols) of the frame that the crop at (top, left) depends on."""
    return _windows(stages, top, left, crop)[0]


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Torch's own nearest-exact source index of every output position (a ramp resized)."""
    ramp = torch.arange(n_in, dtype=torch.float32).view(1, n_in, 1)
    return TF.resize(ramp, [n_out, 1], InterpolationMode.NEAREST_EXACT).view(-1).long()


def nearest_crop(
    mask: torch.Tensor, stages: list[Stage], top: int, left: int, crop: tuple[int, int], flip: bool
) -> torch.Tensor:
    """The crop of the mask resized through ``stages`` (nearest-exact), of the frame flipped when ``flip``."""
    rows = torch.arange(top, top + crop[0])
    cols = torch.arange(left, left + crop[1])
    for stage in reversed(stages):
        (hi, wi), (ho, wo) = stage.size_in, stage.size_out
        if hi != ho:
            rows = _nearest_index(hi, ho)[rows]
        if wi != wo:
            cols = _nearest_index(wi, wo)[cols]
    if flip:
        cols = mask.shape[-1] - 1 - cols
    return mask.index_select(0, rows).index_select(1, cols)


def value_lut(brightness: float | None, contrast: float | None, mean: torch.Tensor | None) -> torch.Tensor:
    """What ``TF.adjust_brightness`` then ``TF.adjust_contrast`` (toward ``mean``) make of each uint8 value: both
    are functions of the value alone, computed here by the same operations on the 256 values."""
    lut = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    if brightness is not None:
        lut = TF.adjust_brightness(lut, brightness)
    if contrast is not None:
        lut = blend_contrast(lut, mean, contrast)
    return lut.view(-1)


def apply_lut(image: torch.Tensor, lut: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``lut[image]`` for a uint8 [C,H,W] image, one plane at a time through PIL's table lookup (several times
    faster than torch's float arithmetic or its int64 indexing); into ``out`` when given."""
    image, table = image.contiguous(), lut.tolist()
    h, w = image.shape[-2:]
    planes = [np.asarray(Image.frombuffer("L", (w, h), p.numpy(), "raw", "L", 0, 1).point(table)) for p in image]
    if out is None:
        return torch.from_numpy(np.stack(planes))
    np.stack(planes, out=out.numpy())
    return out


def scratch_buffer(scratch: dict | None, key: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A buffer kept in ``scratch`` (one per worker) between samples: fresh 8 MB buffers cost page faults."""
    if scratch is None:
        return torch.empty(shape, dtype=dtype)
    buffer = scratch.get(key)
    if buffer is None or buffer.shape != shape:
        buffer = scratch[key] = torch.empty(shape, dtype=dtype)
    return buffer


def contrast_mean(image: torch.Tensor, brightness: float | None, scratch: dict | None = None) -> torch.Tensor:
    """The mean grey level ``TF.adjust_contrast`` blends toward, of the whole (brightness-adjusted) frame: the
    same operations on the same shapes as torchvision's, hence the same float32 value."""
    if brightness is not None:
        out = scratch_buffer(scratch, "bright", image.shape, torch.uint8)
        image = apply_lut(image, value_lut(brightness, None, None), out)
    r, g, b = image.unbind(dim=-3)
    grey = torch.mul(r, 0.2989, out=scratch_buffer(scratch, "grey", r.shape, torch.float32))
    grey = grey.add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3).floor_()
    return torch.mean(grey, dim=(-3, -2, -1), keepdim=True)


def blend_contrast(image: torch.Tensor, mean: torch.Tensor, factor: float) -> torch.Tensor:
    """``TF.adjust_contrast``'s blend of a uint8 image toward a given mean."""
    return image.mul(float(factor)).add_(mean, alpha=1.0 - float(factor)).clamp_(0, 255).to(image.dtype)
