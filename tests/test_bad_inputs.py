"""Bad input across every command: one line naming the culprit, a non-zero exit, nothing FINISHED or half-written.

One table over `python -m deeplab`, `python -m experiments` and `python -m analysis`; each case runs the real
command in a subprocess. The messages are printed as a table (the closing note of issue 5 quotes it).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny import REPO, TINY, tiny_overrides


@dataclass
class Case:
    name: str
    argv: list[str]  # python -m <argv>
    needle: str  # must be in the last stderr line
    env: dict[str, str] = field(default_factory=dict)


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _sets(data_root: Path, **extra: object) -> list[str]:
    return [a for o in tiny_overrides(data_root, **extra) for a in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    sets = _sets(tiny_data, **{"train.iterations": 2, "train.eval_every": 0, "schedule.warmup_iters": 1})
    out = _run(["deeplab", "train", str(TINY), "--run-dir", str(run_dir), *sets])
    assert out.returncode == 0, out.stderr
    return run_dir


def _broken_copy(data: Path, dest: Path, how: str) -> Path:
    """A copy of the tiny dataset with one file broken in the named way."""
    shutil.copytree(data, dest)
    label = sorted((dest / "gtFine" / "val").glob("*/*_labelIds.png"))[0]
    ids = np.array(Image.open(label))
    if how == "corrupt png":
        image = sorted((dest / "leftImg8bit" / "val").glob("*/*.png"))[0]
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    elif how == "id out of range":
        ids[0, 0] = 200
        Image.fromarray(ids).save(label)
    elif how == "label size":
        Image.fromarray(ids[: ids.shape[0] // 2]).save(label)
    elif how == "no label":
        label.unlink()
    elif how == "train ids":  # every training label: the first batch reads one
        for train_label in (dest / "gtFine" / "train").glob("*/*_labelIds.png"):
            bad = np.array(Image.open(train_label))
            bad[0, 0] = 200
            Image.fromarray(bad).save(train_label)
    return dest


def _spec(tmp: Path, name: str, data: Path, grid: object, **top: object) -> Path:
    spec = {
        "name": name,
        "base": str(TINY),
        "grid": grid,
        "overrides": {"data.root": str(data), "data.synthetic": None, "train.iterations": 2},
        "runs_root": str(tmp / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
        **top,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cases(tmp: Path, data: Path, trained: Path) -> list[Case]:
    (tmp / "bad.yaml").write_text("train: [1,\n")
    (tmp / "unknown.yaml").write_text("model: {backbone: resnet50, outptu_stride: 16}\n")
    (tmp / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    other = torch.load(trained / "checkpoint.pt", weights_only=True)
    other["config"]["model"]["backbone"] = "resnet101"
    torch.save(other, tmp / "other_arch.pt")
    (tmp / "noise.log").write_text("tqdm 10%|#    | 1/10\nWarning: something\nTraceback (most recent call last):\n")
    run = str(tmp / "run")
    train = ["deeplab", "train", str(TINY), "--run-dir", run]
    broken = {
        how: _broken_copy(data, tmp / how.replace(" ", "_"), how)
        for how in ("corrupt png", "id out of range", "label size", "no label", "train ids")
    }
    ok_grid = {"model.backbone": ["resnet50"]}
    no_sbatch = {
        "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "sbatch").exists())
    }
    db = f"sqlite:///{tmp / 'mlflow.db'}"
    store = f"sqlite:///{tmp / 'store.db'}"
    mlflow.MlflowClient(store).search_experiments()  # an existing, empty store
    return [
        Case("missing config", ["deeplab", "train", str(tmp / "nope.yaml"), "--run-dir", run], "config file not found"),
        Case(
            "invalid YAML",
            ["deeplab", "train", str(tmp / "bad.yaml"), "--run-dir", run],
            "bad.yaml line 2: not valid YAML",
        ),
        Case(
            "unknown config key",
            ["deeplab", "train", str(tmp / "unknown.yaml"), "--run-dir", run],
            "did you mean model.output_stride?",
        ),
        Case("wrong type", [*train, "--set", "train.iterations=lots"], "train.iterations must be an integer"),
        Case("out of range", [*train, "--set", "data.hflip=3"], "data.hflip must be in [0, 1]"),
        Case("bad --set", [*train, "--set", "train.iterations"], "expected section.key=value"),
        Case("missing data root", [*train, *_sets(tmp / "no-data")], "no-data/leftImg8bit/train does not exist"),
        Case("split counts under --strict", [*train, *_sets(data), "--set", "data.strict=true"], "the official"),
        Case("corrupt PNG", [*train, *_sets(broken["corrupt png"])], "not a readable PNG"),
        Case(
            "label id out of range",
            [*train, *_sets(broken["id out of range"])],
            "label id 200 is not a Cityscapes label id",
        ),
        Case(  # training labels are read as batches need them: the run starts, then ends FAILED (asserted below)
            "training label id out of range",
            ["deeplab", "train", str(TINY), "--run-dir", str(tmp / "failed-run"), *_sets(broken["train ids"])],
            "label id 200 is not a Cityscapes label id",
        ),
        Case("label of the wrong size", [*train, *_sets(broken["label size"])], "but its image is"),
        Case("image without label", [*train, *_sets(broken["no label"])], "has no label"),
        Case(
            "resume with another config",
            ["deeplab", "train", str(TINY), "--run-dir", str(trained), *_sets(data, **{"train.seed": 9})],
            "checkpoint is of config",
        ),
        Case(
            "corrupt checkpoint",
            ["deeplab", "evaluate", "--checkpoint", str(tmp / "corrupt.pt")],
            "corrupt.pt is corrupt or not a checkpoint",
        ),
        Case(
            "checkpoint of another architecture",
            ["deeplab", "evaluate", "--checkpoint", str(tmp / "other_arch.pt"), "--set", f"data.root={data}"],
            "weights do not fit",
        ),
        Case(
            "bad scales",
            ["deeplab", "evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--scales", "0.5,x"],
            "expected comma-separated numbers",
        ),
        Case(
            "unknown backbone",
            ["deeplab", "info", str(TINY), "--set", "model.backbone=resnet18"],
            "model.backbone must be one of",
        ),
        Case(
            "synth over existing data",
            ["deeplab", "data", "synth", "--out", str(data), "--train", "1", "--val", "1"],
            "exists and is not empty",
        ),
        Case(
            "score without ground truth",
            ["deeplab", "score", "--gt", str(tmp / "none"), "--pred", str(tmp)],
            "none/gtFine/val does not exist",
        ),
        Case(
            "unknown download package",
            ["deeplab", "data", "download", "--dest", str(tmp / "dl"), "--packages", "gtFine_everything.zip"],
            "gtFine_everything.zip",
        ),
        Case("sweep spec missing", ["experiments", "sweep", str(tmp / "nope.yaml")], "sweep spec not found"),
        Case(
            "unknown grid key",
            [
                "experiments",
                "sweep",
                str(_spec(tmp, "badkey", data, {"model.backbnoe": ["resnet50"]})),
                "--executor",
                "local",
            ],
            "grid.model.backbnoe is not a config key",
        ),
        Case(
            "empty grid",
            ["experiments", "sweep", str(_spec(tmp, "empty", data, {})), "--executor", "local"],
            "grid is empty",
        ),
        Case(
            "unknown executor",
            ["experiments", "sweep", str(_spec(tmp, "ok", data, ok_grid)), "--executor", "kubernetes"],
            "invalid choice: 'kubernetes'",
        ),
        Case(
            "slurm without sbatch",
            ["experiments", "sweep", str(_spec(tmp, "ok", data, ok_grid)), "--executor", "slurm"],
            "sbatch",
            env=no_sbatch,
        ),
        Case(
            "tracking URI that does not answer",
            [
                "experiments",
                "sweep",
                str(_spec(tmp, "ok", data, ok_grid)),
                "--executor",
                "local",
                "--tracking-uri",
                "http://127.0.0.1:9",
            ],
            "http://127.0.0.1:9",
        ),
        Case("status of a missing spec", ["experiments", "status", str(tmp / "nope.yaml")], "sweep spec not found"),
        Case(
            "import a log with nothing in it",
            [
                "analysis",
                "import-log",
                str(tmp / "noise.log"),
                "--experiment",
                "imported",
                "--backbone",
                "resnet50",
                "--tracking-uri",
                db,
            ],
            "noise.log",
        ),
        Case(
            "import a missing log",
            [
                "analysis",
                "import-log",
                str(tmp / "none.log"),
                "--experiment",
                "imported",
                "--backbone",
                "resnet50",
                "--tracking-uri",
                db,
            ],
            "none.log",
        ),
        Case(
            "report without a store",
            ["analysis", "report", "--experiment", "nope", "--out", str(tmp / "report"), "--tracking-uri", db],
            "no MLflow store at",
        ),
        Case(
            "report on an unknown experiment",
            ["analysis", "report", "--experiment", "nope", "--out", str(tmp / "report"), "--tracking-uri", store],
            "'nope'",
        ),
    ]


@pytest.mark.slow
def test_every_bad_input_gives_one_clear_line_and_leaves_nothing(
    tiny_data: Path, trained: Path, tmp_path: Path
) -> None:
    cases = _cases(tmp_path, tiny_data, trained)
    assert len(cases) >= 20
    before = {p for p in tmp_path.rglob("*")}
    table, problems = [], []
    for case in cases:
        out = _run(case.argv, case.env)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        table.append(f"{case.name:<36} exit {out.returncode}  {last[:150]}")
        if out.returncode == 0 or case.needle not in last:
            problems.append(f"{case.name}: exit {out.returncode}, stderr {out.stderr[-500:]!r}")
        elif len([line for line in lines if line.startswith("error:") or "usage:" in line]) != 1:
            problems.append(f"{case.name}: more than one error line: {lines[-5:]}")
    print("\n".join(["", *table]))
    assert not problems, "\n".join(problems)
    assert not (tmp_path / "run").exists()  # the train commands failed before writing a run directory
    assert json.loads((tmp_path / "failed-run" / "tags.json").read_text())["status"] == "FAILED"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "report").exists() and not (tmp_path / "dl").exists()
    new = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in new if ".tmp" in p.name], "half-written files left behind"
    if (tmp_path / "mlflow.db").exists():  # no run was created, let alone FINISHED
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0
    assert not list(trained.glob(".*.tmp-*"))
