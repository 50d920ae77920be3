"""A disk with no space left at `experiments sweep`'s start: one error naming the file, and nothing left behind."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny import TINY

from deeplab.errors import DeeplabError
from experiments.spec import load_spec
from experiments.sweep import submit


@contextlib.contextmanager
def _full_disk(path: Path, store: Path | None = None) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``path`` (with a copy of ``store`` as mlflow.db) filled to the last byte: a real ENOSPC
    (skipped where mounting is not allowed). A file still open on it when the test ends fails the test, but for
    the copied store: this process's MLflow keeps a connection to a store it opened."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        if store is not None:
            shutil.copyfile(store, path / "mlflow.db")
        with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
            f.write(b"\0" * (4 << 20))
        yield path
    finally:
        busy = subprocess.run(["umount", str(path)], capture_output=True).returncode
        if busy:  # never leave a mount behind
            subprocess.run(["umount", "-l", str(path)], check=True)
        assert not busy or store is not None, f"{path}: a file on the full disk was left open"


@pytest.mark.parametrize(("runs", "store"), [("full", "full"), ("elsewhere", "full"), ("full", "elsewhere")])
def test_a_full_disk_at_sweep_start_is_one_error_and_leaves_nothing(tmp_path: Path, runs: str, store: str) -> None:
    """The lock's record or the new store's tables meet ENOSPC: the error names the file, and the folders, lock
    and half-created database are gone again."""
    with _full_disk(tmp_path / "full") as full:
        where = {"full": full, "elsewhere": tmp_path / "other"}
        where["elsewhere"].mkdir()
        (tmp_path / "spec.yaml").write_text(
            f"name: full\nbase: {TINY}\ngrid: {{model.backbone: [resnet50]}}\n"
            "overrides: {train.iterations: 2, schedule.warmup_iters: 1}\n"
        )
        spec = load_spec(tmp_path / "spec.yaml")
        spec.runs_root, db = where[runs] / "runs", where[store] / "mlflow.db"
        before = sorted(tmp_path.rglob("*"))
        with pytest.raises(DeeplabError) as err:
            submit(spec, "local", tracking_uri=f"sqlite:///{db}", check_data=False)
        assert sorted(tmp_path.rglob("*")) == before
    expected = (
        f"sweep {full / 'runs' / spec.name / '.sweep.lock'}: cannot write its holder record (No space left on device)"
        if runs == "full"
        else f"tracking store {db}: cannot create it (database or disk is full); nothing was created"
    )
    assert str(err.value) == expected


def test_a_store_on_a_full_disk_refuses_the_first_write_and_keeps_nothing(tmp_path: Path, _empty_store: Path) -> None:
    """An existing store that cannot take the sweep's first write: one line naming it (the CLIs' known error),
    the write rolled back, the sweep's folder gone again."""
    from experiments.cli import store_error_line

    with _full_disk(tmp_path / "full", _empty_store) as full:
        (tmp_path / "spec.yaml").write_text(
            f"name: full\nbase: {TINY}\ngrid: {{model.backbone: [resnet50]}}\nruns_root: runs\n"
            "overrides: {train.iterations: 2, schedule.warmup_iters: 1}\n"
        )
        spec, before = load_spec(tmp_path / "spec.yaml"), (full / "mlflow.db").read_bytes()
        with pytest.raises(Exception) as err:
            submit(spec, "local", tracking_uri=f"sqlite:///{full / 'mlflow.db'}", check_data=False)
        assert store_error_line(err.value) == f"tracking store {full / 'mlflow.db'}: database or disk is full"
        assert (full / "mlflow.db").read_bytes() == before and sorted(p.name for p in full.iterdir()) == [
            "filler",
            "mlflow.db",
        ]
    assert not (tmp_path / "runs").exists()
