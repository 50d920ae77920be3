"""Score a folder of labelIds PNG predictions exactly like cityscapesscripts' evalPixelLevelSemanticLabeling.

Predictions are found the official way (``<city>_<seq>_<frame>*.png`` anywhere below the folder, one per
ground-truth image), counted into a label-id confusion matrix with one bincount per image, and reduced to the
``(n+1)×(n+1)`` class matrix of deeplab.metrics; IoU arithmetic follows the official code bit for bit.
"""

from __future__ import annotations

import bisect
import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png, read_file

from deeplab.data.png import png_problem, structure_problem
from deeplab.errors import DeeplabError
from deeplab.labels import CATEGORY_NAMES, CLASS_NAMES, NUM_CLASSES, VALID_LABEL_IDS, id_to_train_id_lut
from deeplab.metrics import category_iou, count_pairs, iou_from_confusion, mean_iou

_MAX_ID = max(VALID_LABEL_IDS)


@dataclass
class ScoreResult:
    confusion: np.ndarray  # (n+1)x(n+1) class matrix
    iou: np.ndarray
    miou: float
    category_iou: np.ndarray
    category_miou: float
    miou_seed: float
    num_images: int

    def to_dict(self) -> dict:
        def clean(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        return {
            "classScores": {n: clean(v) for n, v in zip(CLASS_NAMES, self.iou, strict=True)},
            "averageScoreClasses": clean(self.miou),
            "categoryScores": {n: clean(v) for n, v in zip(CATEGORY_NAMES, self.category_iou, strict=True)},
            "averageScoreCategories": clean(self.category_miou),
            "averageScoreClassesSeedMetric": clean(self.miou_seed),
            "numImages": self.num_images,
            "confMatrix": self.confusion.tolist(),
        }

    def write_json(self, path: Path) -> None:
        """Valid JSON (NaN as null), written atomically."""
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)


def _ground_truth(gt_root: Path, split: str) -> list[Path]:
    gt_dir = gt_root / "gtFine" / split
    if not gt_dir.is_dir():
        raise DeeplabError(f"score --gt: {gt_dir} does not exist (expected <root>/gtFine/{split}/<city>/)")
    files = sorted(gt_dir.glob("*/*_gtFine_labelIds.png"))
    if not files:
        raise DeeplabError(f"score --gt: no *_gtFine_labelIds.png files under {gt_dir}")
    return files


def _prediction_index(pred_dir: Path) -> list[tuple[str, Path]]:
    """Every file below ``pred_dir`` as ``(name, path)``, sorted by name (a ground truth's candidates are one run)."""
    if not pred_dir.is_dir():
        raise DeeplabError(f"score --pred: {pred_dir} is not a directory")
    return sorted((name, Path(root) / name) for root, _, names in os.walk(pred_dir) for name in names)


def _find_prediction(gt_file: Path, index: list[tuple[str, Path]]) -> Path:
    city, seq, frame = gt_file.name.split("_")[:3]
    prefix = f"{city}_{seq}_{frame}"
    pattern = f"{prefix}*.png"
    matches = []
    for name, path in index[bisect.bisect_left(index, (prefix,)) :]:  # the official fnmatch, on the names it can match
        if not name.startswith(prefix):
            break
        if fnmatch.fnmatch(name, pattern):
            matches.append(path)
    if not matches:
        raise DeeplabError(f"score: no prediction {pattern} for ground truth {gt_file}")
    if len(matches) > 1:
        raise DeeplabError(f"score: several predictions match {gt_file.name}: {matches[0]} and {matches[1]}")
    return matches[0]


def decode_ids(path: Path, what: str) -> np.ndarray | torch.Tensor:
    """A label-id PNG as an [H, W] array: plain 8-bit greyscale through libpng (torchvision; ~1.5x faster than PIL),
    every other kind (palette, 16-bit, 1-bit, with alpha...) through PIL, as the official evaluation reads it."""
    try:
        data = read_file(str(path))
        # decode_png crashes the process on bit rot that libpng meets mid-image: the chunk structure is checked first
        if (problem := structure_problem(memoryview(data.numpy()))) is not None:
            raise DeeplabError(f"score: cannot read {what} {path}: {problem}")
        if data.numel() > 25 and int(data[24]) == 8 and int(data[25]) == 0:  # IHDR bit depth 8, colour type grey
            ids = decode_png(data, ImageReadMode.UNCHANGED)
            if ids.shape[0] == 1:
                return ids[0]
        with Image.open(path) as img:
            if what == "ground truth" and img.mode == "P":  # gtFine labelIds are greyscale, as training reads them
                raise DeeplabError(f"score: ground truth {path} is a palette (colour) image; expected label ids")
            return np.array(img)
    except (OSError, ValueError, RuntimeError, Image.DecompressionBombError) as err:
        problem = f"{png_problem(path)} ({err.__class__.__name__})"
        raise DeeplabError(f"score: cannot read {what} {path}: {problem}") from None


def _read_ids(path: Path, what: str) -> torch.Tensor:
    ids = decode_ids(path, what)
    if ids.ndim != 2:
        raise DeeplabError(f"score: {what} {path} has several channels; expected single-channel label ids")
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(ids.astype(np.int64) if ids.dtype.kind in "bu" and ids.dtype != np.uint8 else ids)
    if ids.numel() and ((ids.dtype != torch.uint8 and int(ids.min()) < 0) or int(ids.max()) > _MAX_ID):
        raise DeeplabError(f"score: {what} {path} holds label id {int(ids.max())}; Cityscapes ids are 0..{_MAX_ID}")
    return ids


def label_id_confusion(pred_ids: np.ndarray | torch.Tensor, gt_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(K×K)`` label-id confusion counts (rows GT), K = 34; ids already checked to be ``<= 33``."""
    gt, pred = (
        torch.as_tensor(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in (gt_ids, pred_ids)
    )
    return count_pairs(gt, pred, _MAX_ID + 1).numpy()


def class_confusion(label_mat: np.ndarray) -> np.ndarray:
    """Reduce a label-id matrix to the ``(n+1)×(n+1)`` class matrix (void ids → index n)."""
    lut = id_to_train_id_lut()[: label_mat.shape[0]].astype(np.int64)
    lut[lut == 255] = NUM_CLASSES
    onehot = np.zeros((label_mat.shape[0], NUM_CLASSES + 1), dtype=np.int64)
    onehot[np.arange(label_mat.shape[0]), lut] = 1
    return onehot.T @ label_mat @ onehot


def score_folder(gt_root: Path, pred_dir: Path, split: str = "val") -> ScoreResult:
    """Score every ground-truth image of ``split`` against its prediction in ``pred_dir``."""
    gt_files = _ground_truth(Path(gt_root), split)
    index = _prediction_index(Path(pred_dir))
    total = np.zeros((_MAX_ID + 1, _MAX_ID + 1), dtype=np.int64)
    for gt_file in gt_files:
        pred_file = _find_prediction(gt_file, index)
        gt, pred = _read_ids(gt_file, "ground truth"), _read_ids(pred_file, "prediction")
        if gt.shape != pred.shape:
            raise DeeplabError(
                f"score: prediction {pred_file} is {tuple(pred.shape)[::-1]} (w, h); its GT is {tuple(gt.shape)[::-1]}"
            )
        total += label_id_confusion(pred, gt)
    mat = class_confusion(total)
    iou = iou_from_confusion(mat)
    cat = category_iou(mat)
    seed = iou_from_confusion(mat, seed_metric=True)
    return ScoreResult(mat, iou, mean_iou(iou), cat, mean_iou(cat), mean_iou(seed), len(gt_files))


def format_table(result: ScoreResult) -> str:
    """The class and category IoU table (percent), like the official script prints it."""
    lines = [f"{'class':<15} {'IoU':>7}", "-" * 23]
    lines += [f"{name:<15} {100 * v:7.2f}" for name, v in zip(CLASS_NAMES, result.iou, strict=True)]
    lines += ["-" * 23, f"{'mIoU':<15} {100 * result.miou:7.2f}", f"{'mIoU (seed)':<15} {100 * result.miou_seed:7.2f}"]
    lines += ["", f"{'category':<15} {'IoU':>7}", "-" * 23]
    lines += [f"{name:<15} {100 * v:7.2f}" for name, v in zip(CATEGORY_NAMES, result.category_iou, strict=True)]
    lines += ["-" * 23, f"{'mean':<15} {100 * result.category_miou:7.2f}", f"{result.num_images} images"]
    return "\n".join(lines)
