"""Shared fixtures: a tiny synthetic Cityscapes-layout dataset made by the project's own generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from deeplab.data.synth import synthesize


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train / 2 val images of 64×128 in the official layout, made by the project's generator."""
    root = tmp_path_factory.mktemp("data") / "cityscapes"
    return synthesize(root, train=8, val=2, height=64, width=128, seed=0)
