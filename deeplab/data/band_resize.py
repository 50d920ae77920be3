"""Torch's antialiased bilinear uint8 resize, computed for the outputs a crop needs only.

torch resizes a uint8 image separably, width then height; each output is ``min(255, (Σ w·x + 2^(p-1)) >> p)``
with integer weights ``w`` and a precision ``p`` fixed by the input and output sizes alone (ATen's
``_compute_indices_min_size_weights_aa`` and ``_compute_index_ranges_int16_weights``, in double arithmetic).
``pass_weights`` repeats that arithmetic; a pass is then a matmul with the band of the weight matrix that the
chosen outputs use, ``BLOCK`` outputs at a time. With the weights scaled by 2^-p, every product and partial sum (and
0.5 added) is a multiple of 2^-p below 2^(24-p): float32 holds each exactly, so the sum is exact in any order
(float64 where the sizes allow larger sums, or where float32 matmuls may run in reduced precision).

Images are float [channels, rows, cols] with integer values 0..255.
tests/deeplab/test_data_seed_window.py compares the passes with ``TF.resize`` on random sizes and windows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32  # outputs per matmul: bands of larger blocks hold more zeros, smaller ones cost more calls


@functools.lru_cache(maxsize=64)
def pass_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """ATen's (first input, number of inputs, integer weights [n_out, taps], precision) of one pass."""
    return _weights(n_in, n_out, n_in / n_out)


def _weights(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``pass_weights`` with ATen's scale given: n_in / n_out, or 1 / the scale factor a call passes."""
    support = scale if scale >= 1.0 else 1.0  # bilinear: interp_size 2, support (2·0.5)·scale when downscaling
    taps = math.ceil(support) * 2 + 1
    center = scale * (np.arange(n_out, dtype=np.float64) + 0.5)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    size = np.clip(np.minimum((center + support + 0.5).astype(np.int64), n_in) - first, 0, taps)
    weights = np.zeros((n_out, taps))
    total = np.zeros(n_out)
    for j in range(taps):  # one tap at a time: the same order of the sums as ATen's loop
        x = np.abs(((j + first).astype(np.float64) - center + 0.5) * invscale)
        weights[:, j] = np.where((j < size) & (x < 1.0), 1.0 - x, 0.0)
        total += weights[:, j]
    used = total != 0.0
    weights[used] /= total[used, None]
    wt_max = weights[used].max() if used.any() else 0.0
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return first, size, np.floor(0.5 + weights * (1 << precision)), precision


@dataclass(frozen=True)
class Band:
    """One pass's weights as dense blocks: block b maps inputs ``starts[b]``.. to outputs ``b·BLOCK``.."""

    sizes: tuple[int, int]  # n_in, n_out
    starts: tuple[int, ...]
    mats: tuple[torch.Tensor, ...]  # [inputs, outputs], weights · 2^-p
    clamp: bool  # some output can round to 256
    exact32: bool  # float32 sums are exact


@functools.lru_cache(maxsize=32)
def band(n_in: int, n_out: int) -> Band:
    first, size, weights, precision = pass_weights(n_in, n_out)
    largest = 255 * weights.sum(1).max() + (1 << (precision - 1))
    starts, mats = [], []
    for b0 in range(0, n_out, BLOCK):
        f, s, w = first[b0 : b0 + BLOCK], size[b0 : b0 + BLOCK], weights[b0 : b0 + BLOCK]
        start = int(f[s > 0].min()) if (s > 0).any() else 0
        mat = np.zeros((max(1, int((f + s).max()) - start), len(f)))
        for k in range(w.shape[1]):
            out = np.nonzero(k < s)[0]
            mat[f[out] + k - start, out] = w[out, k]
        starts.append(start)
        mats.append(torch.from_numpy(mat * 2.0**-precision).float())
    return Band((n_in, n_out), tuple(starts), tuple(mats), largest >= 256 << precision, largest < 2**24)


def _float32_exact() -> bool:
    """Float32 matmuls run in full precision (``set_float32_matmul_precision`` can lower them on CPU too)."""
    mkldnn = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
    return torch.get_float32_matmul_precision() == "highest" and mkldnn in ("none", "ieee")


Block = tuple[int, int, torch.Tensor, int, int]


def _blocks(b: Band, first: int, n_win: int, keep: tuple[int, int]) -> Iterator[Block]:
    """(output columns c0..c1 of the kept ones, their weights, window inputs i0..i1) block by block."""
    f, s = pass_weights(*b.sizes)[:2]
    f, s = f[keep[0] : keep[1]], s[keep[0] : keep[1]]
    if f.min() < first or (f + s).max() > first + n_win:
        raise ValueError(f"the window {first}..{first + n_win} lacks inputs of outputs {keep} of {b.sizes}")
    for k in range(keep[0] // BLOCK, (keep[1] - 1) // BLOCK + 1):
        b0, start, mat = k * BLOCK, b.starts[k], b.mats[k]
        j0, j1 = max(keep[0], b0) - b0, min(keep[1], b0 + BLOCK) - b0
        i0, i1 = max(start, first), min(start + mat.shape[0], first + n_win)
        yield b0 + j0 - keep[0], b0 + j1 - keep[0], mat[i0 - start : i1 - start, j0:j1], i0 - first, i1 - first


def _round(out: torch.Tensor, b: Band) -> torch.Tensor:
    out = out.add_(0.5).floor_()  # round half up, as ATen's + 2^(p-1) then >> p
    return (out.clamp_(max=255) if b.clamp else out).float()


def _dtype(b: Band) -> torch.dtype:
    return torch.float32 if b.exact32 and _float32_exact() else torch.float64


def resize_width(
    x: torch.Tensor, n_in: int, n_out: int, first: int, keep: tuple[int, int], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Columns ``keep`` of the n_in → n_out width pass of a float [..., cols] image, from ``x`` holding the frame's
    columns ``first``.. (every column those outputs read); into ``out`` [..., kept] when given."""
    b = band(n_in, n_out)
    dtype = _dtype(b)
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    shape = (*x.shape[:-1], keep[1] - keep[0])
    out = torch.empty(shape, dtype=dtype) if out is None or dtype != out.dtype else out
    flat = out.view(-1, shape[-1])
    for c0, c1, mat, i0, i1 in _blocks(b, first, x.shape[-1], keep):
        torch.mm(rows[:, i0:i1], mat.to(dtype), out=flat[:, c0:c1])
    return _round(out, b)


def resize_height(
    x: torch.Tensor, n_in: int, n_out: int, first: int, keep: tuple[int, int], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows ``keep`` of the n_in → n_out height pass of a float [channels, rows, cols] image, from ``x`` holding
    the frame's rows ``first``.. (every row those outputs read); into ``out`` [channels, kept, cols] when given."""
    b = band(n_in, n_out)
    dtype = _dtype(b)
    x = x.to(dtype)
    shape = (x.shape[0], keep[1] - keep[0], x.shape[2])
    out = torch.empty(shape, dtype=dtype) if out is None or dtype != out.dtype else out
    for c0, c1, mat, i0, i1 in _blocks(b, first, x.shape[1], keep):
        torch.matmul(mat.t().to(dtype), x[:, i0:i1], out=out[:, c0:c1])
    return _round(out, b)


@dataclass(frozen=True)
class WindowCall:
    """torch's resize of inputs ``i0..i1`` to ``b - a`` outputs by ``factor`` (an explicit scale factor): its outputs
    are outputs ``a..b`` of the whole pass, and those a ``window_call`` was asked for are the same, bit for bit."""

    a: int
    b: int
    i0: int
    i1: int
    factor: float


REACH = 48  # outputs a window call may compute before the kept ones, to start where the scale maps to a whole input


def _factor(n_in: int, n_out: int) -> float | None:
    """A scale factor that ATen turns back (``1.0 / factor``, in double) into the whole pass's n_in / n_out."""
    want, f = n_in / n_out, n_out / n_in
    return next((c for c in (f, math.nextafter(f, 0.0), math.nextafter(f, math.inf)) if 1.0 / c == want), None)


@functools.lru_cache(maxsize=4096)
def window_call(n_in: int, n_out: int, keep: tuple[int, int]) -> WindowCall | None:
    """How torch's own uint8 resize (a fast integer kernel) computes outputs ``keep`` of the n_in → n_out pass
    from an input window, or None when no window call gives them bit for bit.

    Output o of the pass is centred on input (o + 0.5)·n_in/n_out; a call that starts at an output ``a`` whose
    a·n_in/n_out is a whole input ``i0``, with the same scale passed explicitly, centres its outputs at the same
    places shifted by i0, so it computes the same weights, away from its own edges. That is checked, not assumed:
    ATen's weights of the call (``_weights``, its arithmetic) must equal the whole pass's for every kept output,
    and so must the precision (set by the largest weight of all the call's outputs)."""
    lo, hi = keep
    if n_in == n_out:
        return WindowCall(lo, hi, lo, hi, 1.0)
    factor = _factor(n_in, n_out)
    if factor is None:
        return None
    first, size, weights, precision = pass_weights(n_in, n_out)
    taps = weights.shape[1]
    period = n_out // math.gcd(n_in, n_out)  # outputs between those centred at a whole input offset
    a = max(0, lo - taps) // period * period
    b = min(n_out, hi + taps)
    i0, i1 = a * n_in // n_out, int((first[a:b] + size[a:b]).max())
    if lo - a > REACH or i1 - i0 == b - a:  # too far back; or torch would see no resize and copy
        return None
    call_first, call_size, call_weights, call_precision = _weights(i1 - i0, b - a, 1.0 / factor)
    k0, k1 = lo - a, hi - a
    same = (
        call_precision == precision
        and np.array_equal(call_first[k0:k1] + i0, first[lo:hi])
        and np.array_equal(call_size[k0:k1], size[lo:hi])
        and np.array_equal(call_weights[k0:k1], weights[lo:hi])
    )
    return WindowCall(a, b, i0, i1, factor) if same else None


def torch_resize(x: torch.Tensor, rows: WindowCall, cols: WindowCall) -> torch.Tensor:
    """torch's antialiased bilinear resize of a uint8 [channels, rows, cols] window as ``rows`` and ``cols`` say:
    outputs rows.a..rows.b × cols.a..cols.b of the whole image's resize."""
    size = [rows.b - rows.a, cols.b - cols.a]
    return torch.ops.aten._upsample_bilinear2d_aa(x[None], size, False, rows.factor, cols.factor)[0]
