"""A split decoded once into raw uint8 files that DataLoader workers memory-map (`deeplab data cache`).

Layout of ``CACHE/<split>/``: per frame ``<name>.image`` (RGB, uint8 [3,H,W]) and ``<name>.label`` (train ids
with 255 void, uint8 [H,W]), then ``<name>.json`` (the sources' sizes and mtimes, the shape), each written to a
temp file and renamed; ``manifest.json`` is written last, when every frame is there. So an interrupted build
resumes where it stopped (frames whose record still matches their sources are kept), a cache without its
manifest is partial, and one whose sources changed since is stale: both are refused in one line.

Reading a frame maps its files copy-on-write (``np.memmap`` mode ``c``): nothing is copied until written, so
the workers and ranks of a node share the frames through the page cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode

from deeplab.data.cityscapes import IMAGE_SUFFIX, missing_label, split_files
from deeplab.data.png import png_header, read_label_ids, read_png
from deeplab.errors import DeeplabError
from deeplab.labels import id_to_train_id_lut
from deeplab.progress import CountProgress

VERSION = 1
MANIFEST = "manifest.json"
_LUT = torch.from_numpy(id_to_train_id_lut())


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rebuild(root: Path, split: str, cache: Path) -> str:
    return f"python -m deeplab data cache {root} --split {split} --out {cache}"


class _FrameWriter(Dataset):
    """Decodes and writes one frame per item (in DataLoader workers); returns its record."""

    def __init__(self, pairs: list[tuple[Path, Path]], out: Path) -> None:
        self.pairs, self.out = pairs, out

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, label_path = self.pairs[index]
        name = image_path.name[: -len(IMAGE_SUFFIX)]
        record = {"name": name, "image_stat": _stat(image_path), "label_stat": _stat(label_path)}
        done = self.out / f"{name}.json"
        if done.is_file():
            old = json.loads(done.read_text())
            if {k: old.get(k) for k in record} == record and _files_complete(self.out, old):
                return old
        image = read_png(image_path, ImageReadMode.RGB)
        ids = read_label_ids(label_path)
        if ids.shape != image.shape[1:]:
            raise DeeplabError(f"{label_path}: label is {tuple(ids.shape)} but its image is {tuple(image.shape[1:])}")
        _write_atomic(self.out / f"{name}.image", image.contiguous().numpy().data)
        _write_atomic(self.out / f"{name}.label", _LUT[ids.long()].contiguous().numpy().data)
        record["shape"] = list(ids.shape)
        _write_atomic(done, json.dumps(record).encode())
        return record


def _files_complete(folder: Path, record: dict) -> bool:
    h, w = record["shape"]
    sizes = {f"{record['name']}.image": 3 * h * w, f"{record['name']}.label": h * w}
    return all((folder / f).is_file() and (folder / f).stat().st_size == n for f, n in sizes.items())


def build_cache(root: str | Path, split: str, out: str | Path, workers: int = 0, progress: str = "auto") -> Path:
    """Decode ``split`` of ``root`` into ``out/split`` (resuming an interrupted build); returns that folder."""
    root, out = Path(root), Path(out)
    pairs = split_files(root, split)
    for image, label in pairs:
        if not label.is_file():
            raise DeeplabError(missing_label(image, label))
    folder = out / split
    _check_space(folder, pairs)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # partial until every frame is written again
    loader = DataLoader(_FrameWriter(pairs, folder), batch_size=None, num_workers=min(workers, len(pairs) // 4))
    bar = CountProgress(f"data cache {split}", len(pairs), progress)
    records = []
    try:
        for record in loader:
            records.append(record)
            bar.advance()
    finally:
        bar.close()
    rel = [(str(i.relative_to(root)), str(lb.relative_to(root))) for i, lb in pairs]
    frames = [{**r, "image": i, "label": lb} for r, (i, lb) in zip(records, rel, strict=True)]
    manifest = {"version": VERSION, "root": str(root.resolve()), "split": split, "frames": frames}
    _write_atomic(folder / MANIFEST, json.dumps(manifest).encode())
    return folder


def _check_space(folder: Path, pairs: list[tuple[Path, Path]]) -> None:
    """Enough free space for the frames not yet written, from the PNG headers (no decode)."""
    need = 0
    for image, _ in pairs:
        name = image.name[: -len(IMAGE_SUFFIX)]
        if not (folder / f"{name}.json").is_file():
            h, w = png_header(image)[0]
            need += 4 * h * w
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise DeeplabError(f"data cache: {folder} needs {need / 1e9:.1f} GB more, {free / 1e9:.1f} GB free")


class CachedSplit(torch.utils.data.Dataset):
    """A cached split with ``CityscapesSegmentation``'s interface: ``load``, ``names``, items
    ``(image, mask, name)``; refuses a partial or stale cache in one line."""

    def __init__(self, cache: str | Path, root: str | Path, split: str, transform=None, max_images: int = 0) -> None:
        self.folder, self.transform = Path(cache) / split, transform
        root = Path(root)
        rebuild = _rebuild(root, split, Path(cache))
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            if not self.folder.is_dir():
                raise DeeplabError(f"data.cache: no cache of {split} in {cache} (`{rebuild}` makes it)")
            done = len(list(self.folder.glob("*.json")))
            raise DeeplabError(f"data.cache: {self.folder} is partial ({done} frames, no {MANIFEST}): `{rebuild}`")
        try:
            manifest = json.loads(manifest_path.read_text())
            frames = manifest["frames"]
        except (ValueError, KeyError, TypeError) as err:
            raise DeeplabError(f"data.cache: {manifest_path} is unreadable ({err}): `{rebuild}`") from None
        if manifest.get("version") != VERSION:
            raise DeeplabError(f"data.cache: {manifest_path} is version {manifest.get('version')}: `{rebuild}`")
        frames = frames[: max_images or None]
        self._check_fresh(frames, root, split, max_images, rebuild)
        self.names = [f["name"] for f in frames]
        self.shapes = [tuple(f["shape"]) for f in frames]

    def _check_fresh(self, frames: list[dict], root: Path, split: str, max_images: int, rebuild: str) -> None:
        pairs = split_files(root, split)[: max_images or None]
        names = [image.name[: -len(IMAGE_SUFFIX)] for image, _ in pairs]
        if names != [f["name"] for f in frames]:
            raise DeeplabError(
                f"data.cache: {self.folder} is stale: it holds {len(frames)} frames, {root} {split} has "
                f"{len(names)} (or other names): `{rebuild}`"
            )
        for frame in frames:
            for key in ("image", "label"):
                source = root / frame[key]
                if not source.is_file():
                    raise DeeplabError(f"data.cache: {self.folder} is stale: {source} is gone: `{rebuild}`")
                if _stat(source) != frame[f"{key}_stat"]:
                    raise DeeplabError(f"data.cache: {self.folder} is stale: {source} changed since: `{rebuild}`")
            if not _files_complete(self.folder, frame):
                raise DeeplabError(f"data.cache: {self.folder} is partial: {frame['name']}'s files: `{rebuild}`")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image uint8 [3,H,W] and train-id mask uint8 [H,W], mapped copy-on-write from the page cache."""
        (h, w), name = self.shapes[index], self.names[index]
        image = np.memmap(self.folder / f"{name}.image", dtype=np.uint8, mode="c", shape=(3, h, w))
        label = np.memmap(self.folder / f"{name}.label", dtype=np.uint8, mode="c", shape=(h, w))
        return torch.from_numpy(image), torch.from_numpy(label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask, None)
        return image, mask, self.names[index]
