"""Image normalization, one function wherever it runs: a table lookup of each uint8 value.

The loader yields uint8 samples; the training step (``deeplab.step``) and the evaluator normalize them on the
device after the copy (a quarter of the bytes to pin and copy, and no CPU time in the data workers). Arithmetic
would not give the same bits everywhere: CUDA divides by a Python scalar as a multiply by its reciprocal, the CPU
divides. So the table holds what ``reference`` (the CPU arithmetic every sample was normalized with until then)
makes of the 256 values of each channel, and every device looks those entries up: the same bits on any device,
and the same as before on the CPU (tests/deeplab/test_data_normalize.py).
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF


def reference(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The CPU arithmetic: ``(image / 255 - mean) / std`` in float32, as torchvision computes it."""
    return TF.normalize(image.float().div_(255), list(mean), list(std))


def normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[channels, 256] float32: ``reference`` of each uint8 value, per channel."""
    values = torch.arange(256, dtype=torch.uint8).expand(len(mean), 1, 256)
    return reference(values, mean, std).view(len(mean), 256).contiguous()


def normalize(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Float32 [..., channels, H, W] of uint8 ``images``: each value's entry of its channel's row of ``table``
    (on the images' device)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize takes uint8 images, not {images.dtype}")
    channels = images.shape[-3]
    offsets = torch.arange(0, 256 * channels, 256, dtype=torch.int32, device=images.device).view(channels, 1, 1)
    # int32 indices: half the memory of int64, and torch's index kernel takes them on CPU and CUDA alike
    return table.view(-1)[images.int() + offsets]


class Normalize:
    """``normalize`` with a data config's mean and std; the table is copied once to each device it meets."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.table = normalize_table(mean, std)
        self._tables: dict[torch.device, torch.Tensor] = {self.table.device: self.table}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        table = self._tables.get(images.device)
        if table is None:
            table = self._tables[images.device] = self.table.to(images.device)
        return normalize(images, table)
