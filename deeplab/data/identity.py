"""Which data a run read, named: a digest of a split's file list, and the dataset records a tracker logs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from deeplab.config import Config
from deeplab.data.cityscapes import split_files
from deeplab.tracking import DatasetInput


def files_digest(files: list[str]) -> str:
    """12 hex digits of the file list (relative paths, in order): the same files give the same digest."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:12]


def split_file_names(root: Path, split: str, count: int = 0) -> list[str]:
    """The split's image files relative to ``root``, sorted; the first ``count`` when given (``val_max_images``)."""
    files = [str(image.relative_to(root)) for image, _ in split_files(root, split)]
    return files[:count] if count else files


def dataset_inputs(cfg: Config) -> list[DatasetInput]:
    """The training and validation splits as dataset records: ``synthetic/<split>`` or ``cityscapes/<split>``."""
    root, data = Path(cfg.data.root), cfg.data
    kind = "synthetic" if data.synthetic is not None else "cityscapes"
    records = []
    splits = (("training", data.train_split, 0), ("validation", data.val_split, data.val_max_images))
    for context, split, count in splits:
        files = split_file_names(root, split, count)
        profile = {"split": split, "images": len(files), "synthetic": data.synthetic is not None}
        if data.cache:
            profile["cache"] = data.cache
        records.append(DatasetInput(f"{kind}/{split}", files_digest(files), context, str(root.resolve()), profile))
    return records
