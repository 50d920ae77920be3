"""The Cityscapes label table, taken from cityscapesscripts (the one source of truth)."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS

IGNORE_INDEX = 255

#: The 19 evaluated classes, in train-id order.
CLASS_NAMES: tuple[str, ...] = tuple(
    lab.name for lab in sorted((lab for lab in _LABELS if not lab.ignoreInEval), key=lambda lab: lab.trainId)
)
NUM_CLASSES = len(CLASS_NAMES)
#: Category of each evaluated class (flat, construction, object, nature, sky, human, vehicle).
CLASS_CATEGORIES: tuple[str, ...] = tuple(
    next(lab.category for lab in _LABELS if lab.name == name and not lab.ignoreInEval) for name in CLASS_NAMES
)
CATEGORY_NAMES: tuple[str, ...] = tuple(dict.fromkeys(CLASS_CATEGORIES))
#: Label ids that the official evaluation scores; all other ids (0–6, 9, 10, 14–16, 18, 29, 30, -1) are void.
EVAL_IDS: tuple[int, ...] = tuple(
    next(lab.id for lab in _LABELS if lab.name == name and not lab.ignoreInEval) for name in CLASS_NAMES
)
#: Every label id that exists in gtFine labelIds PNGs (0..33).
VALID_LABEL_IDS: tuple[int, ...] = tuple(sorted(lab.id for lab in _LABELS if lab.id >= 0))


def id_to_train_id_lut() -> np.ndarray:
    """A 256-entry uint8 lookup: label id → train id (255 for void and for ids that do not exist)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in _LABELS:
        if 0 <= lab.id < 256 and not lab.ignoreInEval:
            lut[lab.id] = lab.trainId
    return lut


def train_id_to_id_lut() -> np.ndarray:
    """A 256-entry uint8 lookup: train id → label id (for writing official labelIds PNGs); 255 → 0 (unlabeled)."""
    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label_id in enumerate(EVAL_IDS):
        lut[train_id] = label_id
    return lut
