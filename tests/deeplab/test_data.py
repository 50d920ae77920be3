"""Cityscapes layout, errors that name the file, transforms keep image and mask aligned, the resumable stream."""

from __future__ import annotations

import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_config

from deeplab.config import DataConfig, SynthConfig
from deeplab.data.check import check_pair, check_split
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.loader import build_train_loader
from deeplab.data.png import label_header, read_label_ids
from deeplab.data.synth import ensure_synthetic, synthesize
from deeplab.data.transforms import EvalTransform, TrainTransform
from deeplab.errors import DeeplabError
from deeplab.labels import id_to_train_id_lut
from deeplab.progress import CountProgress


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
    with pytest.raises(DeeplabError, match="--height must be in 32..4096"):
        synthesize(tmp_path / "huge", train=1, val=1, height=100_000, width=64)
    with pytest.raises(DeeplabError, match="--seed must be in 0..4294967295"):
        synthesize(tmp_path / "seed", train=1, val=1, height=32, width=64, seed=2**32)
    assert not (tmp_path / "huge").exists() and not (tmp_path / "seed").exists()
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
        decoded = torch.round(img[0] / 12).long()
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
    assert a[0].dtype == a[1].dtype == torch.uint8  # normalized on the device (test_data_normalize.py)
    x, y = EvalTransform(DataConfig())(image, mask)
    assert x.shape == (3, 40, 60) and x.dtype == torch.float32 and torch.equal(y, mask.long())


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


def _label_of(root: Path, split: str, index: int = 0) -> Path:
    return sorted((root / "gtFine" / split).rglob("*_labelIds.png"))[index]


def _image_of(root: Path, split: str, index: int = 0) -> Path:
    return sorted((root / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))[index]


def test_label_pngs_are_read_as_the_official_evaluation_reads_ids_or_named(tiny_data: Path, tmp_path: Path) -> None:
    ids = np.array(Image.open(_label_of(tiny_data, "val")))
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "u16.png")  # 16-bit, every id valid: the same labels
    assert torch.equal(read_label_ids(tmp_path / "u16.png"), torch.from_numpy(ids))
    high = ids.astype(np.uint16)
    high[3, 5] = 300
    Image.fromarray(high).save(tmp_path / "u16_300.png")
    Image.fromarray(ids).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.stack([ids, ids], -1), mode="LA").save(tmp_path / "grey_alpha.png")
    good = _label_of(tiny_data, "val").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(ids).save(tmp_path / "jpeg.png", format="JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "zeros.png").write_bytes(good[:60] + bytes(len(good) - 72) + good[-12:])
    flipped = bytearray(good)
    flipped[-13] ^= 0x01  # the last byte of the last IDAT's CRC: decode_png would segfault on it
    (tmp_path / "crc.png").write_bytes(flipped)
    cases = {
        "u16_300.png": "label id 300 is not a Cityscapes label id",
        "palette.png": "palette (colour) image",
        "grey_alpha.png": "must be single-channel label ids, got 2 channels",
        "truncated.png": f"truncated PNG ({len(good) // 2} bytes, no IEND chunk at the end)",
        "jpeg.png": "not a PNG (JPEG data)",
        "empty.png": "empty file (0 bytes)",
        "zeros.png": "chunk at byte 33 fails its CRC check",
        "crc.png": "IDAT chunk at byte",
        "missing.png": "file not found",
    }
    for name, needle in cases.items():
        with pytest.raises(DeeplabError) as err:
            read_label_ids(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: ") or "not found" in needle, str(err.value)
        assert needle in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    with pytest.raises(DeeplabError, match="label PNG is a palette"):
        label_header(tmp_path / "palette.png")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def test_a_broken_stream_with_sound_crcs_is_named_not_a_crash(tiny_data: Path, tmp_path: Path) -> None:
    """Scanlines with an invalid filter type, every CRC right: torchvision 0.29.1's decode_png segfaults on such a
    file (libpng: "bad adaptive filter value"); the data check decodes with PIL first and names it."""
    root = tmp_path / "cs"
    shutil.copytree(tiny_data, root)
    label = _label_of(root, "val")
    ids = np.array(Image.open(label))
    rows = b"".join(b"\x09" + row.tobytes() for row in ids)  # filter types are 0..4
    ihdr = ids.shape[1].to_bytes(4, "big") + ids.shape[0].to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    label.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
    )
    problems = check_pair(_image_of(root, "val"), label)
    assert len(problems) == 1 and problems[0].startswith(f"{label}: not a readable PNG: corrupt PNG ("), problems


def test_data_check_decodes_in_processes_and_lists_every_bad_file(tiny_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cs"
    shutil.copytree(tiny_data, root)
    broken = {
        _label_of(root, "train", 0): "label id 300",
        _image_of(root, "train", 1): "truncated PNG",
        _label_of(root, "train", 2): "palette (colour) image",
        _image_of(root, "train", 3): "not a PNG (JPEG data)",
        _label_of(root, "val", 0): "but its image is",
        _label_of(root, "val", 1): "has no label",
    }
    ids = np.array(Image.open(_label_of(root, "train", 0))).astype(np.uint16)
    ids[0, 0] = 300
    Image.fromarray(ids).save(_label_of(root, "train", 0))
    image = _image_of(root, "train", 1)
    image.write_bytes(image.read_bytes()[:-100])
    Image.open(_label_of(root, "train", 2)).convert("P").save(_label_of(root, "train", 2))
    Image.open(_image_of(root, "train", 3)).save(_image_of(root, "train", 3), format="JPEG")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(_label_of(root, "val", 0))
    _label_of(root, "val", 1).unlink()
    found = [*check_split(root, "train", workers=2).problems, *check_split(root, "val", workers=2).problems]
    assert len(found) == len(broken), found
    for path, needle in broken.items():
        assert [p for p in found if str(path) in p and needle in p], (path, needle, found)
    headers = check_split(root, "train", decode=False).problems  # without decoding: what the headers tell
    assert len(headers) == 2 and [p for p in headers if "palette" in p] and [p for p in headers if "JPEG" in p]
    assert check_split(tiny_data, "train", workers=2).problems == []


def test_count_progress_prints_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = CountProgress("data check val", 3, mode="lines", every_s=0.0)
    for note in ("", "1 bad", "1 bad"):
        bar.advance(note)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("data check val: 1/3 (33%), eta ") and lines[-1].startswith(
        "data check val: 3/3 (100%), 1 bad"
    )
