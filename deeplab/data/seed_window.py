"""The seed order's augmentation computed on the crop window only, bit for bit what the whole frame gives.

The seed order jitters the whole frame, flips it, resizes it (antialiased bilinear; a second, upscaling resize
when it ends smaller than the crop) and crops. Every step but one is local, so only the input window the crop
depends on is processed:
- the colour jitter is per pixel but for contrast's mean, the one statistic of the whole frame
  (deeplab/data/jitter.py computes it, and the jitter of the window, to torchvision's bits);
- torch's uint8 resize is separable (a width pass, then a height pass) integer arithmetic with weights fixed by
  the input and output sizes alone: just the outputs the next stage (and finally the crop) reads are computed, from
  the window's pixels, which cover every support those outputs have; by torch's own kernel on the window where
  deeplab/data/band_resize.py's ``window_call`` proves the call gives them (``plan``), else by its band matmuls;
- nearest (the masks) is a gather: its row and column indices are torch's own, from resizing an index ramp.
tests/deeplab/test_data_seed_window.py pins the equality on random frames, scales and crops.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from deeplab.data.band_resize import WindowCall, resize_height, resize_width, torch_resize, window_call
from deeplab.data.jitter import scratch_buffer

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


@dataclass(frozen=True)
class Step:
    """One stage as computed: its input window (rows, cols of the stage's input image) and how: torch's own resize
    of the window (``calls``: rows, cols), or the band passes (None)."""

    stage: Stage
    rows: tuple[int, int]
    cols: tuple[int, int]
    calls: tuple[WindowCall, WindowCall] | None


def plan(stages: list[Stage], top: int, left: int, crop: tuple[int, int]) -> list[Step]:
    """Each stage's input window and method, first stage first, from the crop back: torch's resize of a window
    where ``window_call`` finds one that gives the crop's outputs bit for bit (torch's integer kernel, several times
    faster than the band matmuls), else the band passes on the window the outputs read."""
    rows, cols = (top, top + crop[0]), (left, left + crop[1])
    steps = []
    for stage in reversed(stages):
        (hi, wi), (ho, wo) = stage.size_in, stage.size_out
        calls = window_call(hi, ho, rows), window_call(wi, wo, cols)
        if calls[0] is not None and calls[1] is not None:
            rows, cols = (calls[0].i0, calls[0].i1), (calls[1].i0, calls[1].i1)
            steps.append(Step(stage, rows, cols, (calls[0], calls[1])))
        else:
            rows, cols = _needed(*rows, hi, ho), _needed(*cols, wi, wo)
            steps.append(Step(stage, rows, cols, None))
    return steps[::-1]


def resize_crop_window(
    window: torch.Tensor, steps: list[Step], top: int, left: int, crop: tuple[int, int], scratch: dict | None = None
) -> torch.Tensor:
    """The crop at (top, left) of the image the stages make, as uint8, from ``window`` = the frame's window of
    ``plan(...)``'s first step, [channels, rows, cols] with uint8 values: uint8 when that step calls torch's
    resize, else float (a scratch buffer)."""
    targets = [(s.rows, s.cols) for s in steps[1:]] + [((top, top + crop[0]), (left, left + crop[1]))]
    for i, (step, (next_rows, next_cols)) in enumerate(zip(steps, targets, strict=True)):
        (rows, cols), ((hi, wi), (ho, wo)) = (step.rows, step.cols), (step.stage.size_in, step.stage.size_out)
        if step.calls is not None:
            calls = step.calls
            window = torch_resize(window.to(torch.uint8).contiguous(), *calls)
            r0, c0 = next_rows[0] - calls[0].a, next_cols[0] - calls[1].a
            window = window[:, r0 : r0 + next_rows[1] - next_rows[0], c0 : c0 + next_cols[1] - next_cols[0]]
            continue
        window = window.float()
        # every column the next stage reads, over this stage's input rows; then those columns' rows
        if wi != wo:
            shape = (*window.shape[:2], next_cols[1] - next_cols[0])
            out = scratch_buffer(scratch, f"width{i}", shape, torch.float32)
            window = resize_width(window, wi, wo, cols[0], next_cols, out)
        else:
            window = window[..., next_cols[0] - cols[0] : next_cols[1] - cols[0]]
        if hi != ho:
            shape = (window.shape[0], next_rows[1] - next_rows[0], window.shape[2])
            out = scratch_buffer(scratch, f"height{i}", shape, torch.float32)
            window = resize_height(window, hi, ho, rows[0], next_rows, out)
        else:
            window = window[:, next_rows[0] - rows[0] : next_rows[1] - rows[0]]
    return window.to(torch.uint8).contiguous()


def input_window(steps: list[Step], top: int, left: int, crop: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """(rows, cols) of the frame that the crop at (top, left) depends on, as ``plan`` computes it."""
    return (steps[0].rows, steps[0].cols) if steps else ((top, top + crop[0]), (left, left + crop[1]))


@functools.lru_cache(maxsize=64)
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
    c0, c1 = int(cols.min()), int(cols.max()) + 1  # the rows' span the columns need only
    return torch.from_numpy(mask.numpy()[:, c0:c1].take(rows.numpy(), 0)[:, cols.numpy() - c0])
