"""`deeplab data cache`: the same frames as the PNGs, the same training stream, resumable builds, and a stale
or partial cache refused in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from deeplab.cli import main
from deeplab.data.cache import MANIFEST, CachedSplit, build_cache
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.loader import build_train_loader, build_val_dataset, check_data
from deeplab.errors import DeeplabError


@pytest.fixture
def data(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cs"
    shutil.copytree(tiny_data, root)
    return root


def test_cached_frames_equal_the_pngs_and_the_stream_is_unchanged(data: Path, tmp_path: Path) -> None:
    assert main(["data", "cache", str(data), "--out", str(tmp_path / "c"), "--workers", "0"]) == 0
    for split in ("train", "val"):
        pngs, cached = CityscapesSegmentation(data, split), CachedSplit(tmp_path / "c", data, split)
        assert cached.names == pngs.names
        for i in range(len(pngs)):
            for a, b in zip(pngs.load(i), cached.load(i), strict=True):
                assert torch.equal(a, b)
    for order in ("seed", "window"):
        extra = {"data.batch_size_per_gpu": 4, "data.augment_order": order}
        png = build_train_loader(tiny_config(data, **extra), 0, 1, 1)
        cache = build_train_loader(tiny_config(data, **extra, **{"data.cache": str(tmp_path / "c")}), 0, 1, 1)
        for _ in range(3):  # crosses an epoch
            for a, b in zip(next(png), next(cache), strict=True):
                assert torch.equal(a, b), order
    cfg = tiny_config(data, **{"data.cache": str(tmp_path / "c"), "data.val_max_images": 1})
    check_data(cfg)
    assert len(build_val_dataset(cfg)) == 1


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text and all(n in text for n in needles), text


def test_stale_and_partial_caches_are_refused_in_one_line(data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with pytest.raises(DeeplabError) as err:
        CachedSplit(cache, data, "train")
    _one_line(err, "no cache of train", "data cache")
    folder = build_cache(data, "train", cache)
    CachedSplit(cache, data, "train")
    image = sorted((data / "leftImg8bit" / "train").rglob("*.png"))[3]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    with pytest.raises(DeeplabError) as err:
        CachedSplit(cache, data, "train")
    _one_line(err, "stale", str(image), "changed")
    build_cache(data, "train", cache)  # refreshed
    frame = sorted(folder.glob("*.label"))[0]
    frame.write_bytes(frame.read_bytes()[:-1])  # truncated
    with pytest.raises(DeeplabError) as err:
        CachedSplit(cache, data, "train")
    _one_line(err, "partial", frame.name.removesuffix(".label"))
    (folder / MANIFEST).unlink()  # an interrupted build
    with pytest.raises(DeeplabError) as err:
        CachedSplit(cache, data, "train")
    _one_line(err, "partial", MANIFEST)
    extra = sorted((data / "leftImg8bit" / "train").rglob("*.png"))[0]
    shutil.copy(extra, extra.with_name("zurich_000000_000000_leftImg8bit.png"))
    label = sorted((data / "gtFine" / "train").rglob("*_labelIds.png"))[0]
    shutil.copy(label, label.with_name("zurich_000000_000000_gtFine_labelIds.png"))
    build_cache(data, "train", cache)
    shutil.rmtree(data / "leftImg8bit" / "train" / extra.parent.name, ignore_errors=False)
    with pytest.raises(DeeplabError) as err:
        CachedSplit(cache, data, "train")
    _one_line(err, "stale", "frames")


def test_an_interrupted_build_resumes_keeping_finished_frames(data: Path, tmp_path: Path) -> None:
    folder = build_cache(data, "train", tmp_path / "c")
    kept = {p: p.stat().st_mtime_ns for p in folder.glob("*.image")}
    (folder / MANIFEST).unlink()
    victim = sorted(kept)[2]
    victim.unlink()
    build_cache(data, "train", tmp_path / "c")
    assert victim.is_file() and all(p.stat().st_mtime_ns == t for p, t in kept.items() if p != victim)
    CachedSplit(tmp_path / "c", data, "train")


def test_bad_input_is_one_line_and_writes_nothing(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c"
    assert main(["data", "cache", str(data), "--split", "train", "nosuch", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nosuch" in err and not out.exists()
