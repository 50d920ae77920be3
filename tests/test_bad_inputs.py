"""Bad input across every command: one line naming the culprit, a non-zero exit, nothing FINISHED or half-written.

One table over `python -m deeplab`, `python -m experiments` and `python -m analysis`; each case runs the real
command in a subprocess (two at a time). The messages are printed as a table (the closing notes of issues 5 and
10 quote it). Places nobody may write in, as root too: /sys, and a read-only tmpfs when mounting is allowed; a
disk with no space left: a full tmpfs, when mounting is allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny import REPO, TINY, fork_log, tiny_overrides


@dataclass
class Case:
    name: str
    argv: list[str]  # python -m <argv>
    needle: str  # must be in the last stderr line
    env: dict[str, str] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)  # each must be in stdout (reports that list every bad file)


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
    """A copy of the tiny dataset with one file broken in the named way (every training label for "train ids";
    one of each kind in train and val for "several", the listing of `data check`)."""
    shutil.copytree(data, dest)
    if how == "train ids":  # every training label: the first batch reads one
        for index in range(len(list((dest / "gtFine" / "train").glob("*/*_labelIds.png")))):
            _break(dest, "id out of range", "train", index)
    elif how == "several":
        for index, kind in enumerate(("uint16 id 300", "truncated image", "no label", "empty label", "jpeg bytes")):
            _break(dest, kind, "train", index)
        _break(dest, "palette label", "val", 0)
        _break(dest, "bad filter", "val", 1)
    else:
        _break(dest, how, "val", 0)
    return dest


def _break(root: Path, how: str, split: str, index: int) -> None:
    """Break the ``index``-th label or image of ``split`` in the named way."""
    label = sorted((root / "gtFine" / split).glob("*/*_labelIds.png"))[index]
    image = sorted((root / "leftImg8bit" / split).glob("*/*.png"))[index]
    ids = np.array(Image.open(label))
    if how == "corrupt png":
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    elif how == "id out of range":
        ids[0, 0] = 200
        Image.fromarray(ids).save(label)
    elif how == "label size":
        Image.fromarray(ids[: ids.shape[0] // 2]).save(label)
    elif how == "no label":
        label.unlink()
    elif how == "uint16 id 300":
        wide = ids.astype(np.uint16)
        wide[1, 1] = 300
        Image.fromarray(wide).save(label)
    elif how == "palette label":
        Image.fromarray(ids).convert("P").save(label)
    elif how == "empty label":
        label.write_bytes(b"")
    elif how == "truncated image":  # the header is intact: only decoding finds it
        image.write_bytes(image.read_bytes()[:-200])
    elif how == "jpeg bytes":
        Image.open(image).save(image, format="JPEG")
    elif how == "flipped crc":  # one bit of an IDAT CRC: decode_png used to segfault on it
        data = bytearray(image.read_bytes())
        data[-13] ^= 0x01
        image.write_bytes(data)
    elif how == "bad filter":  # sound CRCs, invalid scanline filters: decode_png segfaults, PIL raises
        rows = b"".join(b"\x09" + row.tobytes() for row in ids)
        ihdr = ids.shape[1].to_bytes(4, "big") + ids.shape[0].to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
        chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]
        body = b"".join(len(c).to_bytes(4, "big") + k + c + zlib.crc32(k + c).to_bytes(4, "big") for k, c in chunks)
        label.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path | None]:
    """A tmpfs mounted at ``path`` with ``options``, or None where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    try:
        yield path if mounted.returncode == 0 else None
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(path)], check=True)


def _fill(disk: Path, store: Path) -> dict[str, bytes]:
    """A copy of an empty MLflow store on ``disk``, then every byte left taken; returns the disk's files."""
    (disk / "store").mkdir()
    shutil.copyfile(store, disk / "store" / "mlflow.db")
    with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
        f.write(b"\0" * (4 << 20))
    return _files(disk)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fork_logs(folder: Path, how: str) -> Path:
    """The seed fork's two logs in small, the second broken the named way ("missing", "cut mid-line", "cut before
    its final validation": it ends on one)."""
    folder.mkdir()
    (folder / "slurm-11413.out").write_text(fork_log(1000))
    whole = fork_log(800)
    broken = {"cut mid-line": whole[:-3], "cut before its final validation": whole[: whole.rindex("mIOU")]}
    if how in broken:
        (folder / "slurm-11311.out").write_text(broken[how])
    return folder


def _spec(tmp: Path, name: str, data: Path, grid: object, **top: object) -> Path:
    spec = {
        "name": name,
        "base": str(TINY),
        "grid": grid,
        "overrides": {
            "data.root": str(data),
            "data.synthetic": None,
            "train.iterations": 2,
            "schedule.warmup_iters": 1,
        },
        "runs_root": str(tmp / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
        **top,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cases(tmp: Path, data: Path, trained: Path, read_only: Path | None, full: Path | None) -> list[Case]:
    (tmp / "bad.yaml").write_text("train: [1,\n")
    (tmp / "unknown.yaml").write_text("model: {backbone: resnet50, outptu_stride: 16}\n")
    (tmp / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    other = torch.load(trained / "checkpoint.pt", weights_only=True)
    other["config"]["model"]["backbone"] = "resnet101"
    torch.save(other, tmp / "other_arch.pt")
    (tmp / "noise.log").write_text("tqdm 10%|#    | 1/10\nWarning: something\nTraceback (most recent call last):\n")
    run = str(tmp / "run")
    train = ["deeplab", "train", str(TINY), "--run-dir", run]
    kinds = ("corrupt png", "id out of range", "label size", "no label", "train ids", "uint16 id 300")
    kinds += ("palette label", "truncated image", "flipped crc", "several")
    broken = {how: _broken_copy(data, tmp / how.replace(" ", "_"), how) for how in kinds}
    tiny_lines = TINY.read_text().splitlines()
    (tmp / "dup_model.yaml").write_text(TINY.read_text() + "model:\n  backbone: resnet101\n")
    (tmp / "dup_seed.yaml").write_text("train:\n  seed: 1\n  iterations: 5\n  seed: 2\n")
    (tmp / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (tmp / "synth_seed.yaml").write_text(TINY.read_text().replace("seed: 0}", "seed: -1}"))
    (tmp / "a_file").write_text("keep me\n")
    (tmp / "a_dir").mkdir()
    (tmp / "empty_spec.yaml").write_text("")
    preds = tmp / "preds"
    shutil.copytree(data / "gtFine" / "val", preds)  # the ground truth as predictions: a perfect score
    first_pred = sorted(preds.glob("*/*.png"))[0]
    first_pred.write_bytes(first_pred.read_bytes()[:100])
    dup_grid = tmp / "dup_grid.yaml"
    dup_grid.write_text(_spec(tmp, "dupgrid", data, {"train.seed": [0]}).read_text() + "grid: {train.seed: [1]}\n")
    int_key = _spec(tmp, "intkey", data, {1: [0]})
    ok_grid = {"model.backbone": ["resnet50"]}
    no_sbatch = {
        "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "sbatch").exists())
    }
    db = f"sqlite:///{tmp / 'mlflow.db'}"
    store = f"sqlite:///{tmp / 'store.db'}"
    mlflow.MlflowClient(store).search_experiments()  # an existing, empty store
    (tmp / "escape.yaml").write_text('model: {"\\e[2Jevil": 1}\n')  # a key that would clear the terminal
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]  # nine levels of ten aliases: 10⁹ values expanded
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    (tmp / "bomb.yaml").write_text("\n".join(lines) + "\ndata: {root: *a9}\n")
    huge_grid = _spec(
        tmp, "hugegrid", data, {"train.seed": list(range(101)), "optim.lr": [i / 1e4 for i in range(1, 102)]}
    )
    null_section = tmp / "null_section.yaml"
    spec = yaml.safe_load(_spec(tmp, "nullsection", data, ok_grid).read_text())
    null_section.write_text(yaml.safe_dump({**spec, "overrides": {**spec["overrides"], "train": None}}))
    (tmp / "relspec").mkdir()  # data.root: nodata, relative to the spec's folder (commands run from REPO)
    relative = tmp / "relspec" / "spec.yaml"
    relative.write_text(
        yaml.safe_dump(
            {**yaml.safe_load(_spec(tmp, "relative", data, ok_grid).read_text()), "name": "relative"}
        ).replace(str(data), "nodata")
    )
    package = tmp / "package"  # the package data, as fork-data would overwrite it
    shutil.copytree(REPO / "analysis" / "data", package, ignore=shutil.ignore_patterns("published_*"))
    fork = {
        how: _fork_logs(tmp / f"fork_{i}", how)
        for i, how in enumerate(("missing", "cut mid-line", "cut before its final validation"))
    }
    cases = [
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
        # issue 10 §3. YAML: duplicate keys at any depth, keys that are not strings, directories, binary files
        Case(
            "duplicate model: sections",
            ["deeplab", "train", str(tmp / "dup_model.yaml"), "--run-dir", run],
            f"dup_model.yaml line {len(tiny_lines) + 1}: duplicate key 'model' (first at line {tiny_lines.index('model:') + 1})",
        ),
        Case(
            "duplicate nested key",
            ["deeplab", "train", str(tmp / "dup_seed.yaml"), "--run-dir", run],
            "line 4: duplicate key 'seed' (first at line 2)",
        ),
        Case(
            "duplicate key in a --set value",
            [*train, "--set", "model={backbone: resnet50, backbone: resnet101}"],
            "duplicate key 'backbone'",
        ),
        Case("config path is a directory", ["deeplab", "train", str(tmp), "--run-dir", run], "is a directory"),
        Case(
            "binary config file",
            ["deeplab", "train", str(tmp / "binary.yaml"), "--run-dir", run],
            "binary.yaml: not valid YAML",
        ),
        Case(
            "duplicate grid: in a spec",
            ["experiments", "sweep", str(dup_grid), "--executor", "local"],
            "duplicate key 'grid'",
        ),
        Case("grid key not a string", ["experiments", "sweep", str(int_key)], "grid key 1 must be a string"),
        Case("spec path is a directory", ["experiments", "sweep", str(tmp)], "is a directory, expected a YAML"),
        Case("empty spec file", ["experiments", "status", str(tmp / "empty_spec.yaml")], "expected a mapping"),
        # issue 18 §3. overrides never reset a section; an alias bomb is refused unread
        Case("--set train=null", [*train, "--set", "train=null"], "train=null would reset every key of the train"),
        Case("--set model={}", [*train, "--set", "model={}"], "model={} would reset every key of the model section"),
        Case(
            "spec override train: null",
            ["experiments", "sweep", str(null_section), "--dry-run"],
            "train=null would reset every key of the train section",
        ),
        Case("YAML alias bomb", ["deeplab", "info", str(tmp / "bomb.yaml")], "aliases expand to more than 100,000"),
        # numbers: non-finite floats (tuples included), the label table's class count, seeds numpy cannot take
        Case("optim.lr: .nan", [*train, "--set", "optim.lr=.nan"], "optim.lr must be a finite number, got nan"),
        Case("optim.lr: 1e999", [*train, "--set", "optim.lr=1e999"], "optim.lr must be a finite number, got inf"),
        Case("inf inside a tuple", [*train, "--set", "data.mean=[0.4,.inf,0.4]"], "data.mean[1] must be a finite"),
        Case(
            "nan in a grid",
            ["experiments", "sweep", str(_spec(tmp, "nangrid", data, {"optim.lr": [0.01, float("nan")]})), "--dry-run"],
            "optim.lr must be a finite number",
        ),
        Case("num_classes 21", [*train, "--set", "model.num_classes=21"], "model.num_classes must be 19"),
        # sizes that would exhaust memory or the scheduler later: refused at once
        Case("crop 100000²", [*train, "--set", "data.crop_size=[100000,100000]"], "data.crop_size must be 32..4096"),
        Case(
            "synthetic frames 100000 high",
            [*train, "--set", "data.synthetic={height: 100000}"],
            "data.synthetic.height/width must be in 32..4096",
        ),
        Case(
            "a grid of 10,201 runs",
            ["experiments", "sweep", str(huge_grid), "--dry-run"],
            "the grid expands to 10,201 runs; at most 10,000",
        ),
        Case("train.seed: -1", [*train, "--set", "train.seed=-1"], "train.seed must be in 0..4294967295"),
        Case("train.seed: 2**40", [*train, "--set", f"train.seed={2**40}"], "train.seed must be in 0..4294967295"),
        Case(
            "synthetic seed -1 in a file",
            ["deeplab", "train", str(tmp / "synth_seed.yaml"), "--run-dir", run],
            "data.synthetic.seed must be in 0..4294967295",
        ),
        Case(
            "data synth --seed -1",
            ["deeplab", "data", "synth", "--out", str(tmp / "synth"), "--seed", "-1"],
            "--seed must be in 0..4294967295",
        ),
        Case(
            "evaluate --scales nan",
            ["deeplab", "evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--scales", "1,nan"],
            "expected positive finite numbers",
        ),
        Case(
            "report --margin inf",
            ["analysis", "report", "--experiment", "x", "--out", str(tmp / "report"), "--margin", "inf"],
            "expected a positive finite number",
        ),
        Case(
            "report --bootstrap 0",
            ["analysis", "report", "--experiment", "x", "--out", str(tmp / "report"), "--bootstrap", "0"],
            "expected an integer >= 1",
        ),
        # label and image files (the whole val split is decoded before anything is written)
        Case("16-bit label with id 300", [*train, *_sets(broken["uint16 id 300"])], "label id 300 is not a"),
        Case("palette-mode label", [*train, *_sets(broken["palette label"])], "palette (colour) image"),
        Case("truncated image", [*train, *_sets(broken["truncated image"])], "truncated PNG"),
        Case("one flipped CRC bit", [*train, *_sets(broken["flipped crc"])], "IDAT chunk at byte"),
        Case(
            "score: 16-bit GT with id 300",
            ["deeplab", "score", "--gt", str(broken["uint16 id 300"]), "--pred", str(data / "gtFine" / "val")],
            "holds label id 300",
        ),
        Case(
            "score: truncated prediction",
            ["deeplab", "score", "--gt", str(data), "--pred", str(preds)],
            "truncated PNG",
        ),
        Case(
            "data check lists every bad file",
            ["deeplab", "data", "check", str(broken["several"]), "--workers", "2"],
            "data check: 7 bad file(s) under",
            listed=["id 300", "truncated PNG", "has no label", "empty file", "JPEG data", "palette", "corrupt PNG ("],
        ),
        Case(
            "data check, split missing",
            ["deeplab", "data", "check", str(data), "--split", "val", "test"],
            "leftImg8bit/test does not exist",
        ),
        Case(
            "sweep over broken data",
            [
                "experiments",
                "sweep",
                str(_spec(tmp, "brokendata", broken["truncated image"], ok_grid)),
                "--executor",
                "local",
            ],
            "data check: ",
        ),
        # outputs checked before the work: files vs directories, missing parents, nowhere to write
        Case("--run-dir is a file", ["deeplab", "train", str(TINY), "--run-dir", str(tmp / "a_file")], "is a file"),
        Case("--run-dir under /sys", ["deeplab", "train", str(TINY), "--run-dir", "/sys/run"], "cannot write in /sys"),
        Case(
            "evaluate --json is a directory",
            ["deeplab", "evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--json", str(tmp / "a_dir")],
            "is a directory; expected a file name",
        ),
        Case(
            "evaluate --json, no parent",
            ["deeplab", "evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--json", str(tmp / "no/e.json")],
            "does not exist",
        ),
        Case(
            "--save-predictions is a file",
            [
                "deeplab",
                "evaluate",
                "--checkpoint",
                str(trained / "checkpoint.pt"),
                "--save-predictions",
                str(tmp / "a_file"),
            ],
            "is a file; expected a directory",
        ),
        Case(
            "score --json under /sys",
            ["deeplab", "score", "--gt", str(data), "--pred", str(data / "gtFine" / "val"), "--json", "/sys/s.json"],
            "cannot write in /sys",
        ),
        Case(
            "data synth --out is a file",
            ["deeplab", "data", "synth", "--out", str(tmp / "a_file")],
            "is a file; expected a directory",
        ),
        Case(
            "data download --dest is a file",
            ["deeplab", "data", "download", "--dest", str(tmp / "a_file")],
            "is a file; expected a directory",
        ),
        Case(
            "report --out is a file",
            ["analysis", "report", "--experiment", "x", "--out", str(tmp / "a_file"), "--tracking-uri", store],
            "is a file; expected a directory",
        ),
        Case(
            "report --out under /sys",
            ["analysis", "report", "--experiment", "x", "--out", "/sys/report", "--tracking-uri", store],
            "cannot write in /sys",
        ),
        Case("demo --workdir is a file", ["analysis", "demo", "--workdir", str(tmp / "a_file")], "is a file"),
        # issue 18 §3. package data is never regenerated from an incomplete log (--out: a copy of it)
        Case(
            "fork-data, a log missing",
            ["analysis", "fork-data", str(fork["missing"]), "--out", str(package)],
            "slurm-11311.out (No such file",
        ),
        Case(
            "fork-data, a log cut mid-line",
            ["analysis", "fork-data", str(fork["cut mid-line"]), "--out", str(package)],
            "slurm-11311.out is incomplete, refused (the package data is left as it was): it ends mid-line",
        ),
        Case(
            "fork-data, last validation cut",
            ["analysis", "fork-data", str(fork["cut before its final validation"]), "--out", str(package)],
            "cut before its final validation",
        ),
        Case(  # relative paths in a spec are the spec's, whichever directory the command runs in (here REPO)
            "relative data.root of a spec",
            ["experiments", "sweep", str(relative), "--executor", "local"],
            f"{tmp / 'relspec' / 'nodata'}",
        ),
        Case(
            "server --artifact-root in /sys",
            ["experiments", "server", "--backend-store-uri", store, "--artifact-root", "/sys/art", "--port", "5999"],
            "cannot write in /sys",
        ),
        Case("server --port 0", ["experiments", "server", "--port", "0"], "expected an integer in 1..65535"),
        # an OSError deep in our code: one line naming the file
        Case(
            "synthetic data where nobody can write",
            [*train, "--set", "data.root=/sys/synthetic"],
            "/sys/.synthetic",
        ),
        # untrusted text: an escape sequence in a name reaches the terminal as text
        Case(
            "escape sequence in a key", ["deeplab", "info", str(tmp / "escape.yaml")], "unknown key model.\\x1b[2Jevil"
        ),
    ]
    if read_only is not None:
        cases.append(
            Case("--run-dir on a read-only mount", [*train[:-1], str(read_only / "run")], "Read-only file system")
        )
    if full is not None:  # a disk with no space left at sweep start: the lock's record, then the store
        on_full = _spec(tmp, "onfull", data, ok_grid, runs_root=str(full / "runs"))
        spec = yaml.safe_load(on_full.read_text())
        spec["tracking"]["uri"] = f"sqlite:///{full / 'new.db'}"
        on_full.write_text(yaml.safe_dump(spec))
        full_store = _spec(tmp, "fullstore", data, ok_grid, runs_root=str(tmp / "fullstore_runs"))
        spec = yaml.safe_load(full_store.read_text())
        spec["tracking"]["uri"] = f"sqlite:///{full / 'store' / 'mlflow.db'}"
        full_store.write_text(yaml.safe_dump(spec))
        sweep = ["experiments", "sweep", "--executor", "local", "--no-data-check"]
        cases += [
            Case("sweep onto a full disk", [*sweep, str(on_full)], "cannot write its holder record (No space left"),
            Case("sweep into a store on a full disk", [*sweep, str(full_store)], "mlflow.db: database or disk is full"),
        ]
    return cases


def _check(case: Case, tmp: Path) -> tuple[str, str | None]:
    """(table row, problem or None) of one case."""
    out = _run(case.argv, case.env)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    row = f"{case.name:<36} exit {out.returncode}  {last.replace(str(tmp), '$TMP')[:150]}"
    if out.returncode != 2 or case.needle not in last:
        return row, f"{case.name}: exit {out.returncode}, stderr {out.stderr[-500:]!r}"
    if len([line for line in lines if line.startswith("error:") or "usage:" in line]) != 1:
        return row, f"{case.name}: more than one error line: {lines[-5:]}"
    missing = [needle for needle in case.listed if needle not in out.stdout]
    return row, f"{case.name}: {missing} not listed in {out.stdout[-500:]!r}" if missing else None


@pytest.mark.slow
def test_every_bad_input_gives_one_clear_line_and_leaves_nothing(
    tiny_data: Path, trained: Path, tmp_path: Path, _empty_store: Path
) -> None:
    with _tmpfs(tmp_path / "read_only", "ro,size=64k") as read_only, _tmpfs(tmp_path / "full", "size=2m") as full:
        on_full = _fill(full, _empty_store) if full is not None else {}
        package = _files(REPO / "analysis" / "data")
        cases = _cases(tmp_path, tiny_data, trained, read_only, full)
        assert len(cases) >= 85
        before = {p for p in tmp_path.rglob("*")}
        # two commands at a time (most of a case is interpreter start-up), each train on a run directory of its own:
        # two trainers on one directory would meet its lease, not the bad input
        own = [
            replace(c, argv=[f"{a}-{i}" if a == str(tmp_path / "run") else a for a in c.argv])
            for i, c in enumerate(cases)
        ]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda case: _check(case, tmp_path), own))
        assert full is None or _files(full) == on_full, "a sweep left something on the full disk"
    print("\n".join(["", *(row for row, _ in results)]))
    problems = [problem for _, problem in results if problem]
    assert not problems, "\n".join(problems)
    assert not list(tmp_path.glob("run-*"))  # the train commands failed before writing a run directory
    assert json.loads((tmp_path / "failed-run" / "status.json").read_text())["status"] == "FAILED"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "report").exists() and not (tmp_path / "dl").exists()
    assert not (tmp_path / "fullstore_runs").exists() and _files(REPO / "analysis" / "data") == package
    assert _files(tmp_path / "package") == {k: v for k, v in package.items() if not k.startswith("published_")}
    assert not (tmp_path / "relspec" / "runs").exists() and not (tmp_path / "relspec" / "nodata").exists()
    assert not (tmp_path / "synth").exists() and (tmp_path / "a_file").read_text() == "keep me\n"
    assert not list((tmp_path / "a_dir").iterdir())
    new = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in new if ".tmp" in p.name], "half-written files left behind"
    if (tmp_path / "mlflow.db").exists():  # no run was created, let alone FINISHED
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0
    assert not list(trained.glob(".*.tmp-*"))
