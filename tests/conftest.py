"""Shared fixtures: a tiny synthetic Cityscapes-layout dataset made by the project's own generator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deeplab.data.synth import synthesize


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train / 2 val images of 64×128 in the official layout, made by the project's generator."""
    root = tmp_path_factory.mktemp("data") / "cityscapes"
    return synthesize(root, train=8, val=2, height=64, width=128, seed=0)


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite database with its tables and no experiment, made once (its migrations take seconds)."""
    from experiments.store import open_client

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    open_client(f"sqlite:///{db}", create=True)
    return db


@pytest.fixture
def sqlite_store(_empty_store: Path, tmp_path: Path) -> str:
    """The URI of a fresh, empty MLflow store in this test's tmp_path (a copy of the session's empty database)."""
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
