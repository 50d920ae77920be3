"""Bad input to `python -m deeplab`: one line naming the culprit, a non-zero exit, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
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


def _cases(tmp: Path, data: Path, trained: Path) -> list[tuple[str, list[str], str]]:
    (tmp / "bad.yaml").write_text("train: [1,\n")
    (tmp / "unknown.yaml").write_text("model: {backbone: resnet50, outptu_stride: 16}\n")
    (tmp / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    other = torch.load(trained / "checkpoint.pt", weights_only=True)
    other["config"]["model"]["backbone"] = "resnet101"
    torch.save(other, tmp / "other_arch.pt")
    run = str(tmp / "run")
    return [
        ("missing config", ["train", str(tmp / "nope.yaml"), "--run-dir", run], "config file not found"),
        ("invalid YAML", ["train", str(tmp / "bad.yaml"), "--run-dir", run], "bad.yaml line 2: not valid YAML"),
        ("unknown key", ["train", str(tmp / "unknown.yaml"), "--run-dir", run], "did you mean model.output_stride?"),
        (
            "wrong type",
            ["train", str(TINY), "--run-dir", run, "--set", "train.iterations=lots"],
            "train.iterations must be an integer",
        ),
        (
            "out of range",
            ["train", str(TINY), "--run-dir", run, "--set", "data.hflip=3"],
            "data.hflip must be in [0, 1]",
        ),
        (
            "bad --set",
            ["train", str(TINY), "--run-dir", run, "--set", "train.iterations"],
            "expected section.key=value",
        ),
        (
            "missing data root",
            ["train", str(TINY), "--run-dir", run, *_sets(tmp / "no-data")],
            "no-data/leftImg8bit/val does not exist",
        ),
        (
            "resume other config",
            ["train", str(TINY), "--run-dir", str(trained), *_sets(data, **{"train.seed": 9})],
            "checkpoint is of config",
        ),
        (
            "corrupt checkpoint",
            ["evaluate", "--checkpoint", str(tmp / "corrupt.pt")],
            "corrupt.pt is corrupt or not a checkpoint",
        ),
        (
            "other architecture",
            ["evaluate", "--checkpoint", str(tmp / "other_arch.pt"), "--set", f"data.root={data}"],
            "weights do not fit",
        ),
        (
            "bad scales",
            ["evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--scales", "0.5,x"],
            "expected comma-separated numbers",
        ),
        ("bad weights path", ["info", str(TINY), "--set", "model.backbone=resnet18"], "model.backbone must be one of"),
        (
            "synth over data",
            ["data", "synth", "--out", str(data), "--train", "1", "--val", "1"],
            "exists and is not empty",
        ),
        (
            "score missing gt",
            ["score", "--gt", str(tmp / "none"), "--pred", str(tmp)],
            "none/gtFine/val does not exist",
        ),
    ]


def test_bad_inputs_give_one_clear_line(tiny_data: Path, trained: Path, tmp_path: Path) -> None:
    cases = _cases(tmp_path, tiny_data, trained)
    assert len(cases) >= 10
    for name, args, needle in cases:
        out = _run(*args)
        assert out.returncode != 0, name
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert lines and needle in lines[-1], f"{name}: {out.stderr[-400:]}"
        assert len([line for line in lines if line.startswith("error:") or "usage:" in line]) == 1, name
    assert not (tmp_path / "run").exists()  # nothing written for any of the failed train commands
    assert not list(trained.glob(".*.tmp-*"))


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
