"""The published numbers (with sources) shipped as package data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def published_frame() -> pd.DataFrame:
    """Every published row: source, url, method, backbone, output stride, crop, iterations, eval, mIoU, note."""
    return pd.read_csv(Path(__file__).with_name("data") / "published_results.csv")


def published_deeplabv3plus() -> pd.DataFrame:
    """DeepLabV3+ with ResNet-50/101, single-scale: the like-for-like comparison points."""
    frame = published_frame()
    keep = (frame["method"] == "DeepLabV3+") & frame["backbone"].isin(["resnet50", "resnet101"])
    return frame[keep & (frame["eval"] == "single-scale")].reset_index(drop=True)
