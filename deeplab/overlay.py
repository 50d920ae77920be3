"""Prediction PNGs: official labelIds files, colour overlays, and the image / truth / prediction / errors panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image, ImageDraw, ImageFont

from deeplab.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, train_id_to_id_lut

_PALETTE = np.zeros((256, 3), np.uint8)
for _tid in range(NUM_CLASSES):
    _PALETTE[_tid] = trainId2label[_tid].color

PANEL_TILE_WIDTH = 640  # each of the panel's four tiles: readable in MLflow's image view, ~1 MB a panel
ERROR = (255, 0, 0)  # a pixel of an evaluated class predicted as another
VOID = (0, 0, 0)  # a pixel not evaluated (void ground truth)


def save_label_ids(path: Path, pred: torch.Tensor) -> None:
    """Write train-id predictions as an official labelIds PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = train_id_to_id_lut()[pred.numpy().astype(np.uint8)]
    Image.fromarray(ids).save(path)


def overlay(image: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The Cityscapes colours of train ids ``ids`` [H,W] blended over the RGB image [H,W,3]; void (255) left bare."""
    colours = _PALETTE[ids.astype(np.uint8)].astype(np.float32)
    blended = alpha * colours + (1 - alpha) * image.astype(np.float32)
    return np.where((ids == IGNORE_INDEX)[..., None], image, blended.astype(np.uint8))


def save_overlay(path: Path, image: torch.Tensor, pred: torch.Tensor, alpha: float = 0.5) -> None:
    """Blend the Cityscapes colours of ``pred`` over the uint8 image [3,H,W]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image.permute(1, 2, 0).numpy(), pred.numpy(), alpha)).save(path)


def error_map(image: np.ndarray, mask: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Errors in red over the darkened grey image where the prediction is right; void ground truth black."""
    grey = (image.astype(np.float32).mean(-1, keepdims=True) * 0.5).astype(np.uint8).repeat(3, -1)
    out = np.where((mask != pred)[..., None], np.array(ERROR, np.uint8), grey)
    return np.where((mask == IGNORE_INDEX)[..., None], np.array(VOID, np.uint8), out)


def prediction_panel(image: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """A 2×2 RGB panel [H,W,3] uint8 of one validation image: the image, the ground truth and the prediction
    overlaid on it, and the error map; each tile :data:`PANEL_TILE_WIDTH` wide (labels scaled by nearest)."""
    rgb, truth, guess = image.permute(1, 2, 0).numpy(), mask.numpy(), pred.numpy()
    tiles = [
        ("image", rgb),
        ("ground truth", overlay(rgb, truth)),
        ("prediction", overlay(rgb, guess)),
        ("errors (red), void (black)", error_map(rgb, truth, guess)),
    ]
    height = round(rgb.shape[0] * PANEL_TILE_WIDTH / rgb.shape[1])
    panel = Image.new("RGB", (2 * PANEL_TILE_WIDTH, 2 * height))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=max(12, PANEL_TILE_WIDTH // 40))
    for i, (title, tile) in enumerate(tiles):
        x, y = (i % 2) * PANEL_TILE_WIDTH, (i // 2) * height
        resample = Image.Resampling.BILINEAR if i == 0 else Image.Resampling.NEAREST
        panel.paste(Image.fromarray(tile).resize((PANEL_TILE_WIDTH, height), resample), (x, y))
        draw.text((x + 6, y + 4), title, fill="white", font=font, stroke_width=2, stroke_fill="black")
    return np.asarray(panel)


def legend() -> np.ndarray:
    """The colours of the prediction panels: the 19 evaluated classes, then the error map's two."""
    classes = [(name, tuple(int(c) for c in _PALETTE[i])) for i, name in enumerate(CLASS_NAMES)]
    entries = [("ground truth and prediction tiles", None), *classes, ("errors tile", None)]
    entries += [("wrong class", ERROR), ("void: not evaluated", VOID), ("right (the image, darkened)", (96, 96, 96))]
    row, width = 28, 360
    image = Image.new("RGB", (width, row * len(entries) + 8), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    for i, (name, colour) in enumerate(entries):
        y = 4 + i * row
        if colour is None:  # a heading
            draw.text((8, y + 5), name, fill="black", font=font, stroke_width=1, stroke_fill="black")
            continue
        draw.rectangle((8, y + 2, 48, y + row - 4), fill=colour, outline="grey")
        draw.text((60, y + 3), name, fill="black", font=font)
    return np.asarray(image)


def save_legend(path: Path) -> Path:
    """Write :func:`legend` as a PNG; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(legend()).save(path)
    return path
