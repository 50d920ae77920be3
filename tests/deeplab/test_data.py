"""Cityscapes layout, errors that name the file, transforms keep image and mask aligned, the resumable stream."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_config

from deeplab.config import DataConfig, SynthConfig
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.loader import build_train_loader
from deeplab.data.synth import ensure_synthetic, synthesize
from deeplab.data.transforms import EvalTransform, TrainTransform
from deeplab.errors import DeeplabError
from deeplab.labels import id_to_train_id_lut


def test_layout_names_and_train_ids(tiny_data: Path) -> None:
    ds = CityscapesSegmentation(tiny_data, "train")
    assert len(ds) == 8
    image, mask, name = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 128)
    assert mask.shape == (64, 128) and name == ds.names[0]
    label_file = tiny_data / "gtFine" / "train" / name.split("_")[0] / f"{name}_gtFine_labelIds.png"
    ids = np.array(Image.open(label_file))
    assert np.array_equal(mask.numpy(), id_to_train_id_lut()[ids])
    assert 255 in mask.unique().tolist()  # void is kept as 255
    assert len(CityscapesSegmentation(tiny_data, "val", max_images=1)) == 1


def test_synthetic_data_is_deterministic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", train=2, val=1, height=32, width=64, seed=3)
    b = synthesize(tmp_path / "b", train=2, val=1, height=32, width=64, seed=3)
    for fa in sorted(a.rglob("*.png")):
        assert fa.read_bytes() == (b / fa.relative_to(a)).read_bytes()
    with pytest.raises(DeeplabError, match="exists and is not empty"):
        synthesize(a, train=1, val=1, height=32, width=64)
    ensure_synthetic(a, SynthConfig(train=1, val=1, height=32, width=32))  # exists: left alone
    assert len(list((a / "leftImg8bit" / "train").rglob("*.png"))) == 2


def _broken_copy(tiny_data: Path, tmp_path: Path, case: str) -> Path:
    root = tmp_path / "cs"
    shutil.copytree(tiny_data, root)
    label = next((root / "gtFine" / "train").rglob("*_labelIds.png"))
    if case == "missing_label":
        label.unlink()
    elif case == "wrong_size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(label)
    elif case == "corrupt":
        label.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "rgb_label":
        Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(label)
    elif case == "bad_id":
        Image.fromarray(np.full((64, 128), 99, np.uint8)).save(label)
    return root


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_label", "has no label"),
        ("wrong_size", "label is (10, 10) but its image is (64, 128)"),
        ("corrupt", "not a readable PNG"),
        ("rgb_label", "must be single-channel"),
        ("bad_id", "label id 99 is not a Cityscapes label id"),
    ],
)
def test_bad_files_are_named(tiny_data: Path, tmp_path: Path, case: str, needle: str) -> None:
    root = _broken_copy(tiny_data, tmp_path, case)
    with pytest.raises(DeeplabError, match=re.escape(needle)) as err:
        ds = CityscapesSegmentation(root, "train")
        for i in range(len(ds)):
            ds[i]
    assert str(root) in str(err.value)


def test_missing_directory_and_strict_counts(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DeeplabError, match="does not exist"):
        CityscapesSegmentation(tmp_path / "nope", "train")
    with pytest.raises(DeeplabError, match="official train split has 2975"):
        CityscapesSegmentation(tiny_data, "train", strict=True)


def test_train_transform_keeps_image_and_mask_aligned() -> None:
    """Encode the mask in the image colours; after scale/crop/flip the pixels inside regions must still agree."""
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(rng.integers(0, 19, (6, 12)).astype(np.uint8).repeat(16, 0).repeat(16, 1))
    image = (mask * 12).to(torch.uint8).expand(3, -1, -1).contiguous()
    cfg = DataConfig(
        crop_size=(64, 96),
        scales=(0.75, 1.0, 1.5),
        color_jitter=(0.0, 0.0, 0.0),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    for seed in range(12):
        img, m = TrainTransform(cfg)(image, mask, torch.Generator().manual_seed(seed))
        assert img.shape == (3, 64, 96) and m.shape == (64, 96)
        decoded = torch.round(img[0] * 255 / 12).long()
        padded = torch.nn.functional.pad(m[None, None].float(), (2, 2, 2, 2), mode="replicate")[0, 0]
        windows = padded.unfold(0, 5, 1).unfold(1, 5, 1)
        interior = (windows == m[..., None, None]).flatten(-2).all(-1)  # 2 px from any region border
        agree = (decoded == m)[interior].float().mean()
        assert interior.float().mean() > 0.3 and agree > 0.995, f"seed {seed}: {agree:.2%} of interior pixels agree"


def test_pad_to_crop_pads_with_ignore() -> None:
    image, mask = torch.zeros(3, 20, 20, dtype=torch.uint8), torch.zeros(20, 20, dtype=torch.uint8)
    cfg = DataConfig(crop_size=(32, 32), scales=(1.0,), pad_to_crop=True, hflip=0.0)
    _, m = TrainTransform(cfg)(image, mask, torch.Generator().manual_seed(0))
    assert (m == 255).sum() == 32 * 32 - 20 * 20
    _, m = TrainTransform(DataConfig(crop_size=(32, 32), scales=(1.0,)))(image, mask, torch.Generator())
    assert (m == 255).sum() == 0  # the seed upscales instead


def test_transform_is_a_function_of_the_generator_seed() -> None:
    image = torch.randint(0, 255, (3, 40, 60), dtype=torch.uint8)
    mask = torch.randint(0, 19, (40, 60), dtype=torch.uint8)
    t = TrainTransform(DataConfig(crop_size=(24, 32)))
    a = t(image, mask, torch.Generator().manual_seed(5))
    b = t(image, mask, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, y = EvalTransform(DataConfig())(image, mask)
    assert x.shape == (3, 40, 60) and torch.equal(y, mask.long())


def test_two_rank_slices_equal_one_rank_batch_and_resume(tiny_data: Path) -> None:
    one = tiny_config(tiny_data, **{"data.batch_size_per_gpu": 4})
    half = tiny_config(tiny_data, **{"data.batch_size_per_gpu": 2})
    single = build_train_loader(one, 0, 1, 0)
    r0, r1 = build_train_loader(half, 0, 2, 0), build_train_loader(half, 1, 2, 0)
    batches = [next(single) for _ in range(3)]  # 12 samples: crosses an epoch boundary of 8
    for images, masks in batches:
        (a0, m0), (a1, m1) = next(r0), next(r1)
        assert torch.equal(torch.cat([a0, a1]), images) and torch.equal(torch.cat([m0, m1]), masks)
    resumed = build_train_loader(one, 0, 1, 2)
    assert torch.equal(next(resumed)[0], batches[2][0])
    workers = build_train_loader(
        tiny_config(tiny_data, **{"data.batch_size_per_gpu": 4, "data.num_workers": 2}), 0, 1, 1
    )
    assert torch.equal(next(workers)[0], batches[1][0])
