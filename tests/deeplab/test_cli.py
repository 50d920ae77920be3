"""`python -m deeplab` end to end: evaluate → official predictions → score; overlays (bad inputs: tests/test_bad_inputs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import REPO, TINY, tiny_overrides


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deeplab", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def _sets(data_root: Path, **extra: object) -> list[str]:
    return [a for o in tiny_overrides(data_root, **extra) for a in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    out = _run(
        "train",
        str(TINY),
        "--run-dir",
        str(run_dir),
        *_sets(tiny_data, **{"train.iterations": 2, "train.eval_every": 0, "schedule.warmup_iters": 1}),
    )
    assert out.returncode == 0, out.stderr
    return run_dir


def test_evaluate_cli_saves_official_predictions_that_score_the_same(
    trained: Path, tiny_data: Path, tmp_path: Path
) -> None:
    preds = tmp_path / "preds"
    out = _run(
        "evaluate",
        "--checkpoint",
        str(trained / "checkpoint.pt"),
        "--save-predictions",
        str(preds),
        "--json",
        str(tmp_path / "e.json"),
    )
    assert out.returncode == 0, out.stderr
    scored = _run("score", "--gt", str(tiny_data), "--pred", str(preds), "--json", str(tmp_path / "s.json"))
    assert scored.returncode == 0, scored.stderr
    import json

    assert json.loads((tmp_path / "e.json").read_text())["averageScoreClasses"] == pytest.approx(
        json.loads((tmp_path / "s.json").read_text())["averageScoreClasses"], abs=1e-12
    )
    ms = _run("evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--scales", "0.75,1,1.25", "--flip")
    assert ms.returncode == 0 and "mIoU" in ms.stdout


def test_overlay_files_are_pngs(trained: Path) -> None:
    overlays = sorted((trained / "final" / "overlays").glob("*.png"))
    assert overlays
    assert np.array(Image.open(overlays[0])).shape[-1] == 3
