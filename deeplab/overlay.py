"""Prediction PNGs: official labelIds files and colour overlays for a quick look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from deeplab.labels import NUM_CLASSES, train_id_to_id_lut

_PALETTE = np.zeros((256, 3), np.uint8)
for _tid in range(NUM_CLASSES):
    _PALETTE[_tid] = trainId2label[_tid].color


def save_label_ids(path: Path, pred: torch.Tensor) -> None:
    """Write train-id predictions as an official labelIds PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = train_id_to_id_lut()[pred.numpy().astype(np.uint8)]
    Image.fromarray(ids).save(path)


def save_overlay(path: Path, image: torch.Tensor, pred: torch.Tensor, alpha: float = 0.5) -> None:
    """Blend the Cityscapes colours of ``pred`` over the uint8 image [3,H,W]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
    colours = _PALETTE[pred.numpy().astype(np.uint8)].astype(np.float32)
    Image.fromarray((alpha * colours + (1 - alpha) * rgb).astype(np.uint8)).save(path)
