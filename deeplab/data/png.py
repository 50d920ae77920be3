"""Reading the dataset's PNGs: images, gtFine labelIds, headers; a file that cannot be used is named with why."""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png

from deeplab.errors import DeeplabError
from deeplab.labels import VALID_LABEL_IDS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PALETTE = 3  # IHDR colour type
_OTHER_FORMATS = {b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
# indexed by the raw value of an 8- or 16-bit label; built without a torch op: an OpenMP-parallel op at import
# leaves a thread team that deadlocks torch ops in any process forked afterwards (libgomp)
_VALID = torch.from_numpy(np.isin(np.arange(2**16), list(VALID_LABEL_IDS)))


def structure_problem(data: bytes | bytearray | memoryview) -> str | None:
    """What is wrong with a PNG's chunk structure, or None: the signature, every chunk's length, the CRC of every
    critical chunk (IHDR, PLTE, IDAT, IEND) and a final IEND. libpng would find the same while decoding, but
    torchvision's decode_png then crashes the process (a segfault) instead of raising."""
    if not data:
        return "empty file (0 bytes)"
    if bytes(data[:8]) != PNG_SIGNATURE:
        head = bytes(data[:8])
        other = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
        return f"not a PNG ({other} data)" if other else f"not a PNG (starts with {head!r})"
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 12 <= len(view):
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        end = pos + 12 + length
        if not kind.isalpha():
            return f"corrupt PNG (no chunk at byte {pos}: type {kind!r})"
        if end > len(view):
            break
        critical = kind[:1].isupper()  # ancillary chunks with a bad CRC are skipped by libpng, not fatal
        if critical and zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return f"corrupt PNG ({kind.decode(errors='replace')} chunk at byte {pos} fails its CRC check)"
        if kind == b"IEND":
            return None
        pos = end
    return f"truncated PNG ({len(view)} bytes, no IEND chunk at the end)"


def png_problem(path: Path) -> str:
    """Why ``path`` is not a readable PNG, from its bytes: unreadable, empty, another format, truncated, corrupt."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return f"cannot read it ({err.strerror})"
    return structure_problem(data) or "corrupt PNG"


def _unreadable(path: Path, err: Exception) -> DeeplabError:
    problem = png_problem(path)
    if problem == "corrupt PNG":  # the decoder's own words, without torchvision's "function, file.cpp:N, " prefix
        text = str(err).strip().splitlines()[-1] if str(err).strip() else err.__class__.__name__
        problem += f" ({re.sub(r'^.*?[.]cpp:[0-9]+, ', '', text)[:100]})"
    return DeeplabError(f"{path}: not a readable PNG: {problem}")


def _read_sound(path: Path) -> torch.Tensor:
    """The bytes of a PNG whose structure is sound (what decode_png can decode without crashing on bit rot)."""
    try:
        with open(path, "rb") as fh:  # one copy, into a buffer torch can wrap
            data = bytearray(os.fstat(fh.fileno()).st_size)
            del data[fh.readinto(data) :]
    except FileNotFoundError:
        raise DeeplabError(f"file not found: {path}") from None
    except OSError as err:
        raise DeeplabError(f"{path}: cannot read it ({err.strerror})") from None
    problem = structure_problem(data)
    if problem is not None:
        raise DeeplabError(f"{path}: not a readable PNG: {problem}")
    return torch.frombuffer(data, dtype=torch.uint8)


def read_png(path: Path, mode: ImageReadMode) -> torch.Tensor:
    """Decode a PNG into a uint8 (16-bit PNGs with UNCHANGED: uint16) tensor [C,H,W], naming the file if it fails."""
    data = _read_sound(path)
    try:
        return decode_png(data, mode=mode)
    except RuntimeError as err:
        raise _unreadable(path, err) from None


def decodes_safely(path: Path) -> None:
    """Decode the pixels with PIL first: a stream with sound CRCs but broken compressed data (a buggy encoder, a
    crafted file) makes PIL raise where decode_png would crash. The data check calls it before the readers."""
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        raise DeeplabError(f"file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def read_label_ids(path: Path) -> torch.Tensor:
    """A gtFine labelIds PNG as uint8 [H,W]: greyscale (8- or 16-bit) and only ids of the Cityscapes label table.

    Palette PNGs are refused: their pixels are colour indices (a ``*_color.png`` saved as a palette image would
    otherwise be read as ids)."""
    data = _read_sound(path)
    if bytes(data[12:16].numpy()) == b"IHDR" and int(data[25]) == _PALETTE:  # IHDR's colour type byte
        raise _palette(path)
    try:
        raw = decode_png(data, mode=ImageReadMode.UNCHANGED)
    except RuntimeError as err:
        raise _unreadable(path, err) from None
    if raw.shape[0] != 1:
        raise _channels(path, raw.shape[0])
    ids = raw[0] if raw.dtype == torch.uint8 else raw[0].to(torch.int32)  # uint16 supports no indexing
    bad = ~_VALID[ids.long()]
    if bad.any():
        raise DeeplabError(f"{path}: label id {int(ids[bad][0])} is not a Cityscapes label id (0..33)")
    return ids.to(torch.uint8)


def png_header(path: Path) -> tuple[tuple[int, int], str]:
    """(height, width) and PIL mode of a PNG, from its header (no pixel data is read)."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DeeplabError(f"{path}: not a readable PNG: {png_problem(path)}")
            return im.size[::-1], im.mode
    except FileNotFoundError:
        raise DeeplabError(f"file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def label_header(path: Path) -> tuple[int, int]:
    """(height, width) of a label PNG whose header promises greyscale label ids."""
    size, mode = png_header(path)
    if mode == "P":
        raise _palette(path)
    if Image.getmodebands(mode) != 1:
        raise _channels(path, Image.getmodebands(mode))
    return size


def _palette(path: Path) -> DeeplabError:
    return DeeplabError(f"{path}: label PNG is a palette (colour) image; expected greyscale label ids")


def _channels(path: Path, channels: int) -> DeeplabError:
    return DeeplabError(f"{path}: label PNG must be single-channel label ids, got {channels} channels")
