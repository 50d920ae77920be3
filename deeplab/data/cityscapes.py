"""Cityscapes in the official layout: leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine labelIds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.io import ImageReadMode

from deeplab.data.png import read_label_ids, read_png
from deeplab.errors import DeeplabError
from deeplab.labels import id_to_train_id_lut

OFFICIAL_SPLIT_SIZES = {"train": 2975, "val": 500, "test": 1525}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

_LUT = torch.from_numpy(id_to_train_id_lut())


def split_files(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of a split in the official layout, sorted; a label may be missing."""
    image_dir = Path(root) / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DeeplabError(f"data.root: {image_dir} does not exist (expected the official Cityscapes layout)")
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise DeeplabError(f"data.root: no *{IMAGE_SUFFIX} files under {image_dir}")
    label_dir = Path(root) / "gtFine" / split
    return [(p, label_dir / p.parent.name / f"{p.name[: -len(IMAGE_SUFFIX)]}{LABEL_SUFFIX}") for p in images]


def missing_label(image: Path, label: Path) -> str:
    return f"data.root: image {image} has no label {label}"


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
        pairs = split_files(self.root, split)
        if strict and len(pairs) != OFFICIAL_SPLIT_SIZES.get(split, len(pairs)):
            raise DeeplabError(
                f"data.root: {self.root / 'leftImg8bit' / split} holds {len(pairs)} images, the official {split} "
                f"split has {OFFICIAL_SPLIT_SIZES[split]} (drop data.strict to use a subset)"
            )
        if max_images:
            pairs = pairs[:max_images]
        for image, label in pairs:
            if not label.is_file():
                raise DeeplabError(missing_label(image, label))
        self.images = [image for image, _ in pairs]
        self.labels = [label for _, label in pairs]
        self.names = [p.name[: -len(IMAGE_SUFFIX)] for p in self.images]

    def __len__(self) -> int:
        return len(self.images)

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
