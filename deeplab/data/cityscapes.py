"""Cityscapes in the official layout: leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine labelIds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png, read_file

from deeplab.errors import DeeplabError
from deeplab.labels import VALID_LABEL_IDS, id_to_train_id_lut

OFFICIAL_SPLIT_SIZES = {"train": 2975, "val": 500, "test": 1525}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

_LUT = torch.from_numpy(id_to_train_id_lut())
_VALID = torch.zeros(256, dtype=torch.bool)
_VALID[list(VALID_LABEL_IDS)] = True


def read_png(path: Path, mode: ImageReadMode) -> torch.Tensor:
    """Decode a PNG into a uint8 tensor [C,H,W], naming the file when it cannot be read."""
    try:
        return decode_png(read_file(str(path)), mode=mode)
    except FileNotFoundError:
        raise DeeplabError(f"file not found: {path}") from None
    except RuntimeError as err:
        raise DeeplabError(f"{path}: not a readable PNG ({str(err).splitlines()[0][:80]})") from None


def read_label_ids(path: Path) -> torch.Tensor:
    """A gtFine labelIds PNG as uint8 [H,W]; must be single-channel with valid Cityscapes ids."""
    raw = read_png(path, ImageReadMode.UNCHANGED)
    if raw.shape[0] != 1:
        raise DeeplabError(f"{path}: label PNG must be single-channel label ids, got {raw.shape[0]} channels")
    ids = raw[0]
    bad = ~_VALID[ids.long()]
    if bad.any():
        raise DeeplabError(f"{path}: label id {int(ids[bad][0])} is not a Cityscapes label id (0..33)")
    return ids


class CityscapesSegmentation(torch.utils.data.Dataset):
    """Items are ``(image uint8 [3,H,W], train-id mask uint8 [H,W] with 255 void, name)``."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable | None = None,
        strict: bool = False,
        max_images: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise DeeplabError(f"data.root: {image_dir} does not exist (expected the official Cityscapes layout)")
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise DeeplabError(f"data.root: no *{IMAGE_SUFFIX} files under {image_dir}")
        if strict and len(images) != OFFICIAL_SPLIT_SIZES.get(split, len(images)):
            raise DeeplabError(
                f"data.root: {image_dir} holds {len(images)} images, the official {split} split has "
                f"{OFFICIAL_SPLIT_SIZES[split]} (drop data.strict to use a subset)"
            )
        if max_images:
            images = images[:max_images]
        self.images = images
        self.labels = [self._label_path(p) for p in images]
        self.names = [p.name[: -len(IMAGE_SUFFIX)] for p in images]

    def _label_path(self, image: Path) -> Path:
        name = image.name[: -len(IMAGE_SUFFIX)]
        label = self.root / "gtFine" / self.split / image.parent.name / f"{name}{LABEL_SUFFIX}"
        if not label.is_file():
            raise DeeplabError(f"data.root: image {image} has no label {label}")
        return label

    def __len__(self) -> int:
        return len(self.images)

    def check_files(self, label_ids: bool = False) -> None:
        """Read every PNG header: unreadable files, multi-channel labels and size mismatches fail here, before
        training, instead of hours in. With ``label_ids`` every label is decoded and its ids checked too (the
        validation split: its labels are otherwise first read after the first ``eval_every`` iterations; a
        training label is read within the first epoch)."""
        for image, label in zip(self.images, self.labels, strict=True):
            image_size = _png_header(image)[0]
            label_size, bands = _png_header(label)
            if bands != 1:
                raise DeeplabError(f"{label}: label PNG must be single-channel label ids, got {bands} channels")
            if label_ids:
                read_label_ids(label)
            if label_size != image_size:
                w, h = label_size
                raise DeeplabError(f"{label}: label is {(h, w)} but its image is {image_size[::-1]}")

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and train-id mask of one item, checked to agree in size."""
        image = read_png(self.images[index], ImageReadMode.RGB)
        ids = read_label_ids(self.labels[index])
        if ids.shape != image.shape[1:]:
            raise DeeplabError(
                f"{self.labels[index]}: label is {tuple(ids.shape)} but its image is {tuple(image.shape[1:])}"
            )
        return image, _LUT[ids.long()]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask, None)
        return image, mask, self.names[index]


def _png_header(path: Path) -> tuple[tuple[int, int], int]:
    """(width, height) and channel count of a PNG, from its header."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DeeplabError(f"{path}: not a readable PNG (format {im.format})")
            return im.size, len(im.getbands())
    except (OSError, SyntaxError, ValueError) as err:
        raise DeeplabError(f"{path}: not a readable PNG ({str(err).splitlines()[0][:80]})") from None
