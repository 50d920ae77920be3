"""Output paths are checked before work starts: files vs directories, missing parents, places nobody can write
(as root too: a read-only mount, /sys), and nothing is created by a check."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deeplab.errors import DeeplabError
from deeplab.outputs import check_output_dir, check_output_file


@contextlib.contextmanager
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory we may not write in, and why: a read-only tmpfs (root ignores permission bits), else mode 555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path, "Permission denied"
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path, "Read-only file system"
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _message(check, path: Path | str, flag: str) -> str:
    with pytest.raises(DeeplabError) as err:
        check(path, flag)
    return str(err.value)


def test_directories_and_files_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    assert "--out " in _message(check_output_dir, tmp_path / "a_file", "--out")
    assert "is a file; expected a directory" in _message(check_output_dir, tmp_path / "a_file", "--out")
    assert "a_file is a file, not a directory" in _message(check_output_dir, tmp_path / "a_file" / "sub", "--run-dir")
    assert "is a directory; expected a file name" in _message(check_output_file, tmp_path / "a_dir", "--json")
    assert "a_file is a file, not a directory" in _message(check_output_file, tmp_path / "a_file" / "s.json", "--json")
    assert f"directory {tmp_path / 'nope'} does not exist" in _message(
        check_output_file, tmp_path / "nope" / "s.json", "--json"
    )
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert "broken symbolic link" in _message(check_output_dir, tmp_path / "dangling" / "run", "--run-dir")
    # what is fine: a new directory with missing parents, an existing one, a file to (re)write
    assert check_output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert check_output_dir(tmp_path / "a_dir", "--out") == tmp_path / "a_dir"
    assert check_output_file(tmp_path / "a_file", "--json") == tmp_path / "a_file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file", "dangling"]  # nothing created


def test_places_nobody_can_write_are_refused_before_work(tmp_path: Path) -> None:
    for check, path in ((check_output_dir, "/sys/deeplab-run"), (check_output_file, "/sys/scores.json")):
        assert "cannot write in /sys" in _message(check, path, "--out")
    with read_only_dir(tmp_path) as (ro, why):
        assert f"cannot write in {ro} ({why})" in _message(check_output_dir, ro / "a" / "b", "--out")
        assert why in _message(check_output_dir, ro, "--save-predictions")
        assert why in _message(check_output_file, ro / "s.json", "--json")
