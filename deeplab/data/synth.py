"""A synthetic dataset in the official Cityscapes layout, with real label ids (void included).

Scenes are structured like street views (sky on top, buildings on the horizon, road and sidewalk below, poles,
signs, vehicles and people as objects) and every class has its own colour and texture, so a network can learn
them; the layout is random per image. Deterministic for a given seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image

from deeplab.config import MAX_SYNTH_IMAGES, SEED_RANGE, SYNTH_SIZE_RANGE, SynthConfig
from deeplab.errors import DeeplabError

CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster"), "test": ("berlin",)}
_ID = {name: name2label[name].id for name in name2label}
# (class name, texture period in pixels): stripes of different frequency make colour-alike classes separable.
_TEXTURE = {
    "road": 0,
    "sidewalk": 6,
    "building": 4,
    "wall": 8,
    "fence": 3,
    "vegetation": 5,
    "terrain": 7,
    "sky": 0,
    "pole": 0,
    "traffic light": 2,
    "traffic sign": 3,
    "person": 4,
    "rider": 3,
    "car": 6,
    "truck": 9,
    "bus": 5,
    "train": 7,
    "motorcycle": 2,
    "bicycle": 3,
    "static": 2,
    "ego vehicle": 0,
}


def _box(
    rng: np.random.Generator,
    h: int,
    w: int,
    y0: float,
    y1: float,
    hmin: float,
    hmax: float,
    aspect: tuple[float, float],
) -> tuple[slice, slice]:
    """A random rectangle whose bottom lies between rows y0·h and y1·h."""
    bh = max(2, int(h * rng.uniform(hmin, hmax)))
    bw = max(2, int(bh * rng.uniform(*aspect)))
    bottom = int(h * rng.uniform(y0, y1))
    left = int(rng.integers(0, max(1, w - bw)))
    return slice(max(0, bottom - bh), bottom), slice(left, min(w, left + bw))


def _layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Label ids of one scene."""
    lab = np.full((h, w), _ID["road"], np.uint8)
    horizon = int(h * rng.uniform(0.3, 0.5))
    lab[:horizon] = _ID["sky"]
    skyline = (horizon - h * rng.uniform(0.05, 0.25, size=w // 8 + 1)).astype(int).repeat(8)[:w]
    rows = np.arange(h)[:, None]
    lab[(rows >= skyline[None, :]) & (rows < horizon)] = _ID["building"]
    for name in ("wall", "fence", "vegetation", "vegetation", "terrain"):
        if rng.random() < 0.7:
            ys, xs = _box(rng, h, w, 0.45, 0.65, 0.1, 0.25, (0.5, 3.0))
            lab[ys, xs] = _ID[name]
    side = int(w * rng.uniform(0.1, 0.3))
    lab[horizon + h // 8 :, :side] = _ID["sidewalk"]
    lab[horizon + h // 8 :, w - side // 2 :] = _ID["sidewalk"]
    for _ in range(rng.integers(1, 4)):  # poles carrying lights and signs
        x = int(rng.integers(0, w - 3))
        top = int(h * rng.uniform(0.15, 0.35))
        lab[top : int(h * 0.7), x : x + max(2, w // 100)] = _ID["pole"]
        name = "traffic light" if rng.random() < 0.5 else "traffic sign"
        lab[top : top + max(3, h // 25), max(0, x - 2) : x + max(4, w // 50)] = _ID[name]
    vehicles = ["car", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    for name in rng.choice(vehicles, size=rng.integers(1, 4)):
        size = {"car": (0.1, 0.2), "truck": (0.15, 0.25), "bus": (0.2, 0.3), "train": (0.2, 0.3)}.get(name, (0.06, 0.1))
        ys, xs = _box(rng, h, w, 0.6, 0.95, *size, (1.2, 2.5))
        lab[ys, xs] = _ID[name]
    for name in rng.choice(["person", "person", "rider"], size=rng.integers(1, 4)):
        ys, xs = _box(rng, h, w, 0.6, 0.95, 0.1, 0.2, (0.3, 0.5))
        lab[ys, xs] = _ID[name]
    if rng.random() < 0.5:  # void: static clutter and the ego vehicle's bonnet
        ys, xs = _box(rng, h, w, 0.5, 0.9, 0.05, 0.1, (0.5, 2.0))
        lab[ys, xs] = _ID["static"]
    if rng.random() < 0.5:
        lab[int(h * 0.93) :] = _ID["ego vehicle"]
    lab[:, :1] = lab[:, -1:] = _ID["unlabeled"]  # a thin unlabeled border, as in rectified frames
    return lab


def _render(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """RGB image: per-class colour (the official palette, perturbed per image) + class-specific stripes + noise."""
    h, w = lab.shape
    img = np.zeros((h, w, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    shift = rng.uniform(-25, 25, size=3)
    for label_id in np.unique(lab):
        label = next(lb for lb in name2label.values() if lb.id == label_id)
        mask = lab == label_id
        colour = np.array(label.color, np.float32) + shift + rng.uniform(-15, 15, size=3)
        period = _TEXTURE.get(label.name, 0)
        stripes = 0.0 if period == 0 else 20.0 * np.sign(np.sin((xx + 2 * yy) * np.pi / period))[mask][:, None]
        img[mask] = colour + stripes
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_split(root: Path, split: str, count: int, h: int, w: int, rng: np.random.Generator) -> None:
    cities = CITIES[split]
    for i in range(count):
        city = cities[i % len(cities)]
        name = f"{city}_{i // len(cities):06d}_{19 + i:06d}"
        lab = _layout(rng, h, w)
        for kind, sub in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
            (root / kind / split / city).mkdir(parents=True, exist_ok=True)
            array = _render(rng, lab) if kind == "leftImg8bit" else lab
            Image.fromarray(array).save(root / kind / split / city / f"{name}_{sub}.png")


def synthesize(out: Path, *, train: int, val: int, height: int, width: int, seed: int = 0) -> Path:
    """Write ``train`` + ``val`` synthetic image/label pairs under ``out`` atomically (temp dir, then rename)."""
    out = Path(out)
    if not (1 <= train <= MAX_SYNTH_IMAGES and 1 <= val <= MAX_SYNTH_IMAGES):
        raise DeeplabError(f"data synth: --train and --val must be in 1..{MAX_SYNTH_IMAGES}, got {train} and {val}")
    (h_lo, h_hi), (w_lo, w_hi) = SYNTH_SIZE_RANGE
    if not (h_lo <= height <= h_hi and w_lo <= width <= w_hi):
        raise DeeplabError(
            f"data synth: --height must be in {h_lo}..{h_hi} and --width in {w_lo}..{w_hi}, got {height}x{width}"
        )
    if seed not in SEED_RANGE:
        raise DeeplabError(f"data synth: --seed must be in 0..{SEED_RANGE[-1]} (what numpy's RNG takes), got {seed}")
    if out.exists() and any(out.iterdir()):
        raise DeeplabError(f"data synth: {out} exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rng = np.random.default_rng(seed)
        _write_split(tmp, "train", train, height, width, rng)
        _write_split(tmp, "val", val, height, width, rng)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_synthetic(root: Path, cfg: SynthConfig) -> None:
    """Generate the dataset at ``root`` unless it exists; safe when several processes race to do it."""
    root = Path(root)
    if (root / "leftImg8bit").is_dir():
        return
    try:
        synthesize(root, train=cfg.train, val=cfg.val, height=cfg.height, width=cfg.width, seed=cfg.seed)
    except (DeeplabError, OSError):
        if not (root / "leftImg8bit").is_dir():  # not a lost race: a real failure
            raise
