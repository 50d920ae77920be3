"""Atomic checkpoints: temp file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplab.errors import DeeplabError
from deeplab.lease import check_own, open_own

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` so that ``path`` always holds either the previous or the new complete checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open_own(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):
            _raise_if_disk_full(path, state, err)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_if_disk_full(path: Path, state: dict[str, Any], err: BaseException) -> None:
    """torch reports a full disk as ENOSPC or, when a write came up short, as ``unexpected pos``: say it plainly."""
    free = shutil.disk_usage(path.parent).free
    needed = sum(t.nbytes for t in _tensors(state))
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needed:
        raise DeeplabError(
            f"checkpoint {path}: no space left on the device ({free / 1e6:.0f} MB free, about {needed / 1e6:.0f} MB "
            "needed); nothing was replaced, the previous checkpoint (if any) is intact"
        ) from None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; a missing or corrupt file is a one-line error."""
    path = Path(path)
    check_own(path)
    if path.is_dir():
        raise DeeplabError(f"checkpoint {path} is a directory (expected RUN_DIR/{CHECKPOINT_NAME})")
    if not path.is_file():
        raise DeeplabError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as err:  # torch raises many types for truncated/corrupt files
        raise DeeplabError(f"checkpoint {path} is corrupt or not a checkpoint ({err.__class__.__name__})") from None
    if not isinstance(state, dict) or not {"model", "iteration", "config"} <= set(state):
        raise DeeplabError(f"checkpoint {path} lacks model/iteration/config: not written by this project")
    return state


def peek_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint memory-mapped (its tensors are not read); None when there is no readable checkpoint."""
    try:
        check_own(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, torn, foreign, or a symlink
        return None


def checkpoint_progress(path: Path) -> tuple[int, dict[str, float] | None] | None:
    """(iteration, final metrics or None) of a checkpoint without reading its tensors; None when there is no
    readable checkpoint."""
    state = peek_checkpoint(path)
    if state is None:
        return None
    return int(state.get("iteration", 0)), state.get("final_metrics")


def weights_of(state: dict[str, Any], source: Path | str) -> dict[str, torch.Tensor]:
    """The model weights of one of our checkpoints; a finished run trained with keep_weights=false has none."""
    if not state["model"]:
        raise DeeplabError(
            f"{source}: this finished run kept no weights (it was trained with train.keep_weights=false)"
        )
    return state["model"]


def rng_state() -> dict[str, Any]:
    """The process's RNG states, in types that ``torch.load(weights_only=True)`` accepts. CUDA: only the current
    device's (``cuda_device``), the one this rank draws from: a resume may see fewer or other GPUs."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``; the CUDA state goes to the current device only. Checkpoints written before kept
    every visible device's state (``cuda``, a list): the current device's entry is used when the list has one."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if not torch.cuda.is_available():
        return
    device = torch.cuda.current_device()
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif device < len(state.get("cuda", ())):
        torch.cuda.set_rng_state(state["cuda"][device], device)
