"""Checkpoint writes on a full disk: a one-line error, the previous checkpoint intact, no temp file left.

Both tests use a real kernel: /dev/full answers every write with ENOSPC, and a 2 MB tmpfs runs out part-way
through the zip (torch then reports ``unexpected pos``, as it did when CI's disk filled up)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deeplab import checkpoint
from deeplab.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from deeplab.errors import DeeplabError


def _state(n: int, iteration: int) -> dict:
    return {"model": {"w": torch.full((n,), float(iteration))}, "iteration": iteration, "config": {}}


def test_enospc_names_the_file_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, _state(1000, 1))
    # the temp file's writes go to /dev/full, where every write fails with ENOSPC (the tmpfs test below is the
    # real full disk, where mounting is allowed)
    tmp = tmp_path / f".{CHECKPOINT_NAME}.tmp-{os.getpid()}"
    monkeypatch.setattr(checkpoint, "open_own", lambda _path, mode: open("/dev/full", mode))  # noqa: SIM115
    with pytest.raises(DeeplabError, match=rf"checkpoint {path}: no space left on the device \(\d+ MB free") as err:
        save_checkpoint(path, _state(1000, 2))
    assert "\n" not in str(err.value)
    assert load_checkpoint(path)["iteration"] == 1
    assert not tmp.exists() and not tmp.is_symlink()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_write_cut_short_by_a_full_filesystem_is_reported_as_such(small_fs: Path) -> None:
    path = small_fs / CHECKPOINT_NAME
    save_checkpoint(path, _state(100_000, 1))  # 0.4 MB fits
    with pytest.raises(DeeplabError, match=r"no space left on the device \(\d+ MB free, about 8 MB needed\)"):
        save_checkpoint(path, _state(2_000_000, 2))  # 8 MB does not
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in small_fs.iterdir()) == [CHECKPOINT_NAME]


def test_a_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(DeeplabError, match="is a directory \\(expected RUN_DIR/checkpoint.pt\\)"):
        load_checkpoint(tmp_path)
