"""The resumable, rank-sharded training stream.

Iteration ``i``'s global batch is stream positions ``[i·B, (i+1)·B)`` with ``B = batch_per_rank · world``; the
stream is one permutation of the dataset per epoch, seeded by ``(seed, epoch)``; rank ``r`` takes the ``r``-th
slice. Each sample is augmented with a generator seeded by ``(seed, position)``. So a 2-rank run sees the same
global batches as a 1-rank run, and a run resumed at iteration ``k`` continues as if never stopped, whatever
the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deeplab.config import Config
from deeplab.data.cache import CachedSplit
from deeplab.data.check import check_split
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.synth import ensure_synthetic
from deeplab.data.transforms import TrainTransform
from deeplab.distributed import data_workers
from deeplab.errors import DeeplabError
from deeplab.signals import forking_children, ignore_job_signals

_MIX = 1_000_003  # keeps (seed, epoch) and (seed, position) streams apart


class StreamPositions(Dataset):
    """Maps a stream position to an augmented sample of ``base``."""

    def __init__(self, base: CityscapesSegmentation | CachedSplit, transform: TrainTransform, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.base)

    def _index(self, position: int) -> int:
        epoch = position // len(self.base)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * _MIX + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.base), generator=g)
        return int(self._perm[position % len(self.base)])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.base.load(self._index(position))
        g = torch.Generator().manual_seed((self.seed * _MIX + position) % (2**63))
        return self.transform(image, mask, g)


class RankPositions(Sampler[int]):
    """Endless stream positions of one rank, from ``start_iteration`` on."""

    def __init__(self, batch_per_rank: int, rank: int, world_size: int, start_iteration: int) -> None:
        self.b, self.rank, self.world, self.start = batch_per_rank, rank, world_size, start_iteration

    def __iter__(self) -> Iterator[int]:
        it = self.start
        while True:
            first = it * self.b * self.world + self.rank * self.b
            yield from range(first, first + self.b)
            it += 1


def _ensure_data(cfg: Config) -> None:
    if cfg.data.synthetic is not None:
        ensure_synthetic(Path(cfg.data.root), cfg.data.synthetic)


def build_train_loader(cfg: Config, rank: int, world_size: int, start_iteration: int) -> Iterator:
    """An endless iterator of ``(images [b,3,h,w], masks [b,h,w])``, both uint8, for this rank, from
    ``start_iteration`` (the training step normalizes the images on the device: ``deeplab.step.device_batch``)."""
    _ensure_data(cfg)
    if cfg.data.cache:
        base = CachedSplit(cfg.data.cache, cfg.data.root, cfg.data.train_split)
    else:
        base = CityscapesSegmentation(cfg.data.root, cfg.data.train_split, strict=cfg.data.strict)
    positions = StreamPositions(base, TrainTransform(cfg.data), cfg.train.seed)
    workers = data_workers(cfg.data.num_workers)
    loader = DataLoader(
        positions,
        batch_size=cfg.data.batch_size_per_gpu,
        sampler=RankPositions(cfg.data.batch_size_per_gpu, rank, world_size, start_iteration),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=ignore_job_signals,
    )
    with forking_children():  # persistent workers are forked here, once
        return iter(loader)


def check_data(cfg: Config, progress: str = "auto") -> None:
    """Both splits exist in the official layout (official sizes under data.strict); the training split's PNG
    headers are sound (its files are decoded within the first epoch); every validation image and label decodes,
    with only Cityscapes ids (they are otherwise first read at the first validation, maybe hours in). With
    ``data.cache``, both splits' caches are complete and fresh instead (building one decoded every file)."""
    _ensure_data(cfg)
    for split in (cfg.data.train_split, cfg.data.val_split):
        if cfg.data.strict:
            CityscapesSegmentation(cfg.data.root, split, strict=True)
        if cfg.data.cache:
            CachedSplit(cfg.data.cache, cfg.data.root, split)
            continue
        decode = split == cfg.data.val_split
        limit = cfg.data.val_max_images if decode else 0  # the validation images that will be read
        checked = check_split(
            cfg.data.root, split, decode=decode, workers=cfg.data.num_workers, progress=progress, limit=limit
        )
        if len(checked.problems) == 1:
            raise DeeplabError(checked.problems[0])
        if checked.problems:
            listing = f"python -m deeplab data check {cfg.data.root} --split {split}"
            more = f"{len(checked.problems) - 1} more bad file(s) in {split}: `{listing}` lists them"
            raise DeeplabError(f"{checked.problems[0]} (and {more})")


def build_val_dataset(cfg: Config) -> CityscapesSegmentation | CachedSplit:
    """The validation split (raw uint8 items; the evaluator normalizes)."""
    _ensure_data(cfg)
    if cfg.data.cache:
        return CachedSplit(cfg.data.cache, cfg.data.root, cfg.data.val_split, max_images=cfg.data.val_max_images)
    return CityscapesSegmentation(
        cfg.data.root, cfg.data.val_split, strict=cfg.data.strict, max_images=cfg.data.val_max_images
    )
