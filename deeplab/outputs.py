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
