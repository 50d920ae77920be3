"""Output paths a command takes, checked before its work starts (not after an hour of scoring).

Writability is probed by creating an anonymous temporary file where the output will go: unlike permission bits or
``os.access``, that also tells the truth for root, read-only mounts, ``/proc`` and ``/sys``, and NFS root-squash.
Nothing is created by a check (the probe has no name and vanishes when closed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from deeplab.errors import DeeplabError


def _probe(directory: Path, flag: str, path: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise DeeplabError(f"{flag} {path}: cannot write in {directory} ({err.strerror})") from None


def _nearest_existing(path: Path, flag: str, original: Path) -> Path:
    """``path`` or its closest ancestor that exists; it must be a directory."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            if not candidate.exists():
                raise DeeplabError(f"{flag} {original}: {candidate} is a broken symbolic link")
            if not candidate.is_dir():
                raise DeeplabError(f"{flag} {original}: {candidate} is a file, not a directory")
            return candidate
    return Path.cwd()  # unreachable for absolute paths; a relative path with no existing part lives in the cwd


def check_output_dir(path: str | Path, flag: str) -> Path:
    """A directory the command will create (with its parents) or write into: not a file, somewhere writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DeeplabError(f"{flag} {path}: is a file; expected a directory")
    _probe(_nearest_existing(path, flag, path), flag, path)
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """A file the command will (re)write: not a directory, in an existing, writable directory."""
    path = Path(path)
    if path.is_dir():
        raise DeeplabError(f"{flag} {path}: is a directory; expected a file name")
    parent = path.parent
    if not parent.exists():
        raise DeeplabError(f"{flag} {path}: directory {parent} does not exist")
    _probe(_nearest_existing(parent, flag, path), flag, path)
    return path


def missing_dirs(path: str | Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what creating it would make."""
    missing = []
    for candidate in (Path(path), *Path(path).parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    return missing


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove each directory (deepest first) while it is empty: a command that failed before writing into the folders
    it made leaves none behind. Stops at the first one that holds something (or is gone)."""
    for directory in dirs:
        try:
            directory.rmdir()
        except OSError:
            return
