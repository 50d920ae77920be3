"""The published numbers (with sources) shipped as package data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# One name per source, its repository's owner in brackets. The file follows the shared reference table byte for
# byte (a test), which names the seed repository's README two ways and the res50 fork's README unlike its logs.
SOURCE_NAMES = {
    "seed repository README (CoinCheung)": "seed README (CoinCheung)",
    "seed README outreach": "seed fork README (konami86)",
    "seed fork log slurm-11413.out": "seed fork log slurm-11413.out (konami86)",
    "seed fork log slurm-11311.out": "seed fork log slurm-11311.out (konami86)",
}


def published_frame() -> pd.DataFrame:
    """Every published row: source, url, method, backbone, output stride, crop, iterations, eval, mIoU, note."""
    frame = pd.read_csv(Path(__file__).with_name("data") / "published_results.csv")
    return frame.assign(source=frame.source.replace(SOURCE_NAMES))


def published_deeplabv3plus() -> pd.DataFrame:
    """DeepLabV3+ with ResNet-50/101, single-scale: the like-for-like comparison points."""
    frame = published_frame()
    keep = (frame["method"] == "DeepLabV3+") & frame["backbone"].isin(["resnet50", "resnet101"])
    return frame[keep & (frame["eval"] == "single-scale")].reset_index(drop=True)
