"""Checking a dataset before the work starts: every image and label of a split decoded, every bad file listed.

Every file is decoded twice: by PIL, which raises on a broken stream, then by the reader training uses (so the
check and training agree on what is readable). Files are decoded in worker processes (a torch DataLoader, so the
start method and worker set-up are torch's): torchvision's ``decode_png`` holds the GIL, so threads decode no
faster than one (bench/bench_data_check.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode

from deeplab.data.cityscapes import missing_label, split_files
from deeplab.data.png import decodes_safely, label_header, png_header, read_label_ids, read_png
from deeplab.errors import DeeplabError
from deeplab.progress import CountProgress
from deeplab.signals import forking_children, ignore_job_signals

_PAIRS_PER_WORKER = 8  # below this a split is checked in-process: starting workers would cost more


@dataclass
class SplitCheck:
    root: Path
    split: str
    pairs: int
    problems: list[str] = field(default_factory=list)  # one line per bad file, naming it

    def summary(self) -> str:
        return f"{len(self.problems)} bad file(s) among {self.pairs} image/label pairs of {self.root} {self.split}"


def check_pair(image: Path, label: Path, decode: bool = True) -> list[str]:
    """What is wrong with one image/label pair: each problem names its file. ``decode=False`` reads headers only."""
    if not label.is_file():
        return [missing_label(image, label)]
    problems: list[str] = []
    image_size = label_size = None
    try:
        image_size = _image_size(image, decode)
    except DeeplabError as err:
        problems.append(str(err))
    try:
        label_size = _label_size(label, decode)
    except DeeplabError as err:
        problems.append(str(err))
    if image_size and label_size and image_size != label_size:
        problems.append(f"{label}: label is {label_size} but its image is {image_size}")
    return problems


# PIL decodes first: decode_png crashes on some broken streams instead of raising; then the reader training uses
def _image_size(image: Path, decode: bool) -> tuple[int, ...]:
    if not decode:
        return png_header(image)[0]
    decodes_safely(image)
    return tuple(read_png(image, ImageReadMode.RGB).shape[1:])


def _label_size(label: Path, decode: bool) -> tuple[int, ...]:
    if not decode:
        return label_header(label)
    decodes_safely(label)
    return tuple(read_label_ids(label).shape)


class _PairProblems(Dataset):
    def __init__(self, pairs: list[tuple[Path, Path]], decode: bool) -> None:
        self.pairs, self.decode = pairs, decode

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> list[str]:
        return check_pair(*self.pairs[index], decode=self.decode)


def available_cpus() -> int:
    """CPUs this process may run on (a SLURM allocation, a taskset), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_split(
    root: str | Path, split: str, *, decode: bool = True, workers: int = 0, progress: str = "auto", limit: int = 0
) -> SplitCheck:
    """Check every pair of ``split`` under ``root`` (the first ``limit`` when > 0, as ``max_images`` reads them)
    with ``workers`` processes (0: in this process)."""
    root = Path(root)
    pairs = split_files(root, split)[: limit or None]
    result = SplitCheck(root, split, len(pairs))
    workers = min(workers, len(pairs) // _PAIRS_PER_WORKER)
    loader = DataLoader(
        _PairProblems(pairs, decode), batch_size=None, num_workers=workers, worker_init_fn=ignore_job_signals
    )
    bar = CountProgress(f"data check {split}", len(pairs), progress)
    with forking_children():  # the workers start here
        batches = iter(loader)
    try:
        for problems in batches:
            result.problems += problems
            bar.advance(f"{len(result.problems)} bad" if result.problems else "")
    finally:
        bar.close()
    return result
