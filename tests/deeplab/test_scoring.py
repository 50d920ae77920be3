"""`score` is bit-equal to the official Cityscapes evaluation, run itself on randomized images."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab.errors import DeeplabError
from deeplab.labels import CATEGORY_NAMES, CLASS_NAMES, EVAL_IDS, VALID_LABEL_IDS
from deeplab.scoring import score_folder

OFFICIAL = Path(__file__).with_name("official_eval.py")


def _random_tree(root: Path, pred: Path, rng: np.random.Generator, n_images: int = 5) -> None:
    """Random GT/prediction label-id maps: void GT, predicted void ids, some classes absent entirely."""
    absent = set(rng.choice(EVAL_IDS, size=4, replace=False).tolist())
    gt_ids = [i for i in VALID_LABEL_IDS if i not in absent]
    for i in range(n_images):
        city = ("aachen", "bremen")[i % 2]
        h, w = (24, 40) if i % 3 else (32, 48)
        gt = rng.choice(gt_ids, size=(h, w)).astype(np.uint8)
        blocks = rng.choice(gt_ids, size=(h // 8, w // 8)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        gt[: blocks.shape[0], : blocks.shape[1]] = np.where(rng.random(blocks.shape) < 0.5, blocks, gt[:h, :w])
        # noise includes void ids and one absent class (IoU 0); the other absent classes stay NaN
        noisy = rng.choice([*gt_ids, min(absent)], size=(h, w)).astype(np.uint8)
        prediction = np.where(rng.random((h, w)) < 0.6, gt, noisy).astype(np.uint8)
        name = f"{city}_{i:06d}_{i + 19:06d}"
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(root / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png")
        (pred / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(prediction).save(pred / city / f"{name}_pred.png")


def _official(root: Path, pred: Path) -> dict:
    out = subprocess.run(
        [sys.executable, str(OFFICIAL), str(root), str(pred), "val"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same(a: float, b: float | None) -> bool:
    return (math.isnan(a) and (b is None or math.isnan(b))) or a == b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bit_equal_to_official_evaluation(tmp_path: Path, seed: int) -> None:
    root, pred = tmp_path / "gt", tmp_path / "pred"
    _random_tree(root, pred, np.random.default_rng(seed))
    official = _official(root, pred)
    ours = score_folder(root, pred, "val")
    for name, value in zip(CLASS_NAMES, ours.iou, strict=True):
        assert _same(value, official["classScores"][name]), name
    assert ours.miou == official["averageScoreClasses"]
    for name, value in zip(CATEGORY_NAMES, ours.category_iou, strict=True):
        assert _same(value, official["categoryScores"][name]), name
    assert ours.category_miou == official["averageScoreCategories"]
    assert np.isnan(ours.iou).sum() == 3  # absent and never predicted: the NaN rule was exercised
    assert (ours.iou == 0).sum() >= 1


def test_seed_metric_is_lower_when_void_is_predicted(tmp_path: Path) -> None:
    root, pred = tmp_path / "gt", tmp_path / "pred"
    _random_tree(root, pred, np.random.default_rng(5))
    result = score_folder(root, pred, "val")
    assert result.miou_seed < result.miou


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no_gt", "does not exist"),
        ("missing_pred", "no prediction aachen_000000_000019*.png"),
        ("two_preds", "several predictions match"),
        ("wrong_size", "is (8, 4) (w, h); its GT is (8, 8)"),
        ("corrupt", "cannot read prediction"),
        ("rgb", "has several channels"),
        ("bad_id", "holds label id 200"),
        ("palette_gt", "ground truth"),
        ("u16_gt", "holds label id 300"),
        ("truncated", "truncated PNG"),
    ],
)
def test_errors_name_the_file(tmp_path: Path, case: str, needle: str) -> None:
    root, pred = tmp_path / "gt", tmp_path / "pred"
    gt_file = root / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    if case != "no_gt":
        _write(gt_file, np.full((8, 8), 7, np.uint8))
    pred_file = pred / "aachen_000000_000019_x.png"
    pred.mkdir(parents=True, exist_ok=True)
    if case in ("no_gt", "two_preds"):
        _write(pred_file, np.full((8, 8), 7, np.uint8))
    if case == "two_preds":
        _write(pred / "sub" / "aachen_000000_000019_y.png", np.full((8, 8), 7, np.uint8))
    if case == "wrong_size":
        _write(pred_file, np.full((4, 8), 7, np.uint8))
    if case == "corrupt":
        pred_file.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    if case == "rgb":
        _write(pred_file, np.zeros((8, 8, 3), np.uint8))
    if case == "bad_id":
        _write(pred_file, np.full((8, 8), 200, np.uint8))
    if case == "palette_gt":
        Image.fromarray(np.full((8, 8), 7, np.uint8)).convert("P").save(gt_file)
    if case == "u16_gt":
        _write(gt_file, np.full((8, 8), 300, np.uint16))
    if case in ("palette_gt", "u16_gt", "truncated"):
        _write(pred_file, np.full((8, 8), 7, np.uint8))
    if case == "truncated":
        pred_file.write_bytes(pred_file.read_bytes()[:45])  # into the pixel data
    with pytest.raises(DeeplabError, match=re.escape(needle)):
        score_folder(root, pred, "val")


def test_palette_predictions_are_read_as_ids_like_the_official_evaluation(tmp_path: Path) -> None:
    """mmsegmentation writes its Cityscapes predictions as palette PNGs whose indices are label ids."""
    root, pred = tmp_path / "gt", tmp_path / "pred"
    _write(
        root / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", np.full((8, 8), 7, np.uint8)
    )
    pred.mkdir()
    Image.fromarray(np.full((8, 8), 7, np.uint8)).convert("P").save(pred / "aachen_000000_000019_x.png")
    assert score_folder(root, pred, "val").miou == 1.0


def test_cli_prints_table_and_writes_json(tmp_path: Path) -> None:
    root, pred = tmp_path / "gt", tmp_path / "pred"
    _random_tree(root, pred, np.random.default_rng(3), n_images=2)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "deeplab",
            "score",
            "--gt",
            str(root),
            "--pred",
            str(pred),
            "--json",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "mIoU" in out.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert set(data["classScores"]) == set(CLASS_NAMES)
    bad = subprocess.run(
        [sys.executable, "-m", "deeplab", "score", "--gt", str(tmp_path / "nope"), "--pred", str(pred)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "nope" in bad.stderr


def _save_kind(path: Path, ids: np.ndarray, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "P":  # palette indices are the label ids
        img = Image.frombytes("P", ids.shape[::-1], ids.tobytes())
        img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        img.save(path)
    elif kind == "I;16":
        Image.fromarray(ids.astype(np.uint16)).save(path)
    elif kind == "1":
        Image.fromarray(ids % 2 == 1).save(path)
    elif kind == "L+tRNS":
        Image.fromarray(ids).save(path, transparency=7)
    elif kind == "LA":
        Image.fromarray(np.stack([ids, np.full_like(ids, 255)], -1), "LA").save(path)
    else:
        Image.fromarray(ids).save(path)


def test_every_png_kind_is_read_as_the_official_evaluation_reads_it(tmp_path: Path) -> None:
    """Plain 8-bit greyscale goes through libpng, the rest through PIL: palette, 16-bit, 1-bit and transparent
    predictions score bit-equal to the official evaluation; a two-channel one is refused by both."""
    root, pred = tmp_path / "gt", tmp_path / "pred"
    rng = np.random.default_rng(11)
    for i, kind in enumerate(["L", "P", "I;16", "1", "L+tRNS"]):
        gt = rng.choice(VALID_LABEL_IDS, size=(16, 24)).astype(np.uint8)
        guess = np.where(rng.random(gt.shape) < 0.7, gt, rng.choice(VALID_LABEL_IDS, size=gt.shape)).astype(np.uint8)
        name = f"aachen_{i:06d}_{i + 19:06d}"
        _write(root / "gtFine" / "val" / "aachen" / f"{name}_gtFine_labelIds.png", gt)
        _save_kind(pred / f"{name}_{kind.replace(';', '').replace('+', '')}.png", guess, kind)
    official = _official(root, pred)
    ours = score_folder(root, pred, "val")
    assert ours.miou == official["averageScoreClasses"]
    for name, value in zip(CLASS_NAMES, ours.iou, strict=True):
        assert _same(value, official["classScores"][name]), name
    _save_kind(pred / "aachen_000000_000019_L.png", np.zeros((16, 24), np.uint8), "LA")
    refused = subprocess.run([sys.executable, str(OFFICIAL), str(root), str(pred), "val"], capture_output=True)
    assert refused.returncode != 0
    with pytest.raises(DeeplabError, match="has several channels"):
        score_folder(root, pred, "val")
