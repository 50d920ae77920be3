"""`python -m experiments sweep` refuses bad input in one line naming the culprit, before anything is created or
submitted; `--dry-run` only prints; `sync` mirrors run directories into their MLflow runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny import TINY

from deeplab.checkpoint import load_checkpoint
from deeplab.tracking import JsonlTracker
from experiments.spec import load_spec
from experiments.sweep import plan

if TYPE_CHECKING:
    from conftest import LocalCluster

GOOD_GRID = "grid:\n  model.backbone: [resnet50, resnet101]\n  train.seed: [0, 1]\n"


def _spec(tmp_path: Path, grid: str = GOOD_GRID, *, uri: str | None = None, file: str = "spec.yaml") -> Path:
    """A spec whose runs, MLflow store and data all live in tmp_path, under a name no other test uses."""
    name = f"cli_{uuid.uuid4().hex[:10]}"
    uri = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / file
    path.write_text(
        f"name: {name}\nbase: {TINY}\nruns_root: runs\ntracking: {{uri: '{uri}'}}\n{grid}"
        f"overrides:\n  data.root: {tmp_path / 'data'}\n  train.iterations: 6\n  schedule.warmup_iters: 2\n"
    )
    return path


def _cli(*args: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if path is not None:
        env["PATH"] = path
    cmd = [sys.executable, "-m", "experiments", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _error_line(out: subprocess.CompletedProcess) -> str:
    """The one line that names the problem (argparse prints its usage above it)."""
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], out.stderr
    return errors[0]


def _assert_nothing_created(tmp_path: Path) -> None:
    assert not (tmp_path / "mlflow.db").exists(), "an MLflow store was created"
    assert not (tmp_path / "runs").exists(), "a run directory (or a submitit job folder) was created"
    assert not (tmp_path / "data").exists(), "data was generated"


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unknown grid key", "grid.model.backbon is not a config key (did you mean model.backbone?)"),
        ("empty grid", "grid is empty"),
        ("unknown executor", "argument --executor: invalid choice: 'kubernetes'"),
        ("slurm without sbatch", "--executor slurm: sbatch is not on PATH"),
        ("unreachable tracking URI", "tracking URI http://127.0.0.1:9 does not answer"),
        ("spec file missing", "sweep spec not found: "),
        ("runs_root is a file", "runs_root: "),
    ],
)
def test_bad_input_is_named_in_one_line_and_nothing_is_created(tmp_path: Path, case: str, needle: str) -> None:
    args, path = ["--executor", "local"], None
    spec = _spec(tmp_path)
    if case == "unknown grid key":
        spec = _spec(tmp_path, "grid:\n  model.backbon: [resnet50]\n")
    elif case == "empty grid":
        spec = _spec(tmp_path, "grid: {}\n")
    elif case == "unknown executor":
        args = ["--executor", "kubernetes"]
    elif case == "slurm without sbatch":
        args, path = ["--executor", "slurm"], str(Path(sys.executable).parent)  # python, but no SLURM commands
    elif case == "unreachable tracking URI":
        args += ["--tracking-uri", "http://127.0.0.1:9"]
    elif case == "spec file missing":
        spec = tmp_path / "missing.yaml"
    elif case == "runs_root is a file":
        (tmp_path / "runs").write_text("not a directory")
    out = _cli("sweep", str(spec), *args, cwd=tmp_path, path=path)
    assert out.returncode == 2, (out.returncode, out.stderr[-500:])
    line = _error_line(out)
    assert needle in line, line
    if case == "spec file missing":
        assert str(spec) in line
    if case == "runs_root is a file":  # checked before any MLflow run (or store) is made
        assert line == f"error: runs_root: {tmp_path / 'runs'} is not a directory"
        (tmp_path / "runs").unlink()
    assert "submitted" not in out.stdout
    _assert_nothing_created(tmp_path)


def test_dry_run_prints_the_table_and_submits_nothing(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    out = _cli("sweep", str(spec), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-500:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].split() == ["hash", "run", "status", "run", "dir"]
    runs = [line.split() for line in lines[1 : lines.index("")]]
    assert [r[1] for r in runs] == [f"backbone={b},seed={s}" for b in ("resnet50", "resnet101") for s in (0, 1)]
    assert all(r[2] == "-" and r[3] == str(tmp_path / "runs" / load_spec(spec).name / r[0]) for r in runs)
    memory = lines[lines.index("") + 1 : -1]  # the estimate per cell (deeplab.memory), before anything is submitted
    assert memory[0].startswith("GPU memory per GPU, training (2 ranks;") and len(memory) == 3
    assert [m.split()[0] for m in memory[1:]] == ["backbone=resnet50", "backbone=resnet101"]
    assert all(" GB " in m for m in memory[1:])
    assert lines[-1] == "dry run: 4 runs, nothing submitted"
    _assert_nothing_created(tmp_path)


@pytest.mark.slurm
def test_bad_input_for_the_slurm_executor_submits_no_job(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    cases = [
        (
            _spec(tmp_path, "grid:\n  model.backbon: [resnet50]\n", file="a.yaml"),
            [],
            "grid.model.backbon is not a config key",
        ),
        (_spec(tmp_path, file="b.yaml"), ["--tracking-uri", "http://127.0.0.1:9"], "does not answer"),
    ]
    for spec, extra, needle in cases:
        out = _cli("sweep", str(spec), "--executor", "slurm", *extra, cwd=tmp_path)
        assert out.returncode == 2 and needle in _error_line(out), out.stderr[-500:]
        name = yaml.safe_load(spec.read_text())["name"]  # the spec may not load
        sacct = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-S", "2020-01-01", "--name", name, "-o", "JobID"],
            capture_output=True,
            text=True,
        )
        assert sacct.returncode == 0 and sacct.stdout.strip() == "", sacct.stdout
    _assert_nothing_created(tmp_path)


def test_sync_mirrors_run_directories_into_their_runs(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    spec = load_spec(spec_path)
    uri = spec.tracking_uri
    planned = plan(spec, uri, dry_run=False)  # the parent and child runs, as `sweep` creates them before submitting
    written = planned[:2]
    for i, p in enumerate(written):  # points a job recorded while the server was away
        record = JsonlTracker(p.run.run_dir)
        for step in range(1, 6):
            record.log_metrics({"train/loss": 1.0 / step + i}, step)
        record.flush()

    unreachable = _cli("sync", str(spec_path), "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert unreachable.returncode == 2
    assert "tracking URI http://127.0.0.1:9 does not answer" in _error_line(unreachable)

    out = _cli("sync", str(spec_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-800:]
    lines = out.stdout.splitlines()
    assert sorted(lines[:2]) == sorted(
        f"synced {p.run.run_dir.name} into run {p.child.run_id}: 5 points, 0 params, 0 tags, 0 artifacts, 0 images"
        for p in written
    )
    # the runs were created but no job was ever submitted for them (a sweep that stopped first): not left SCHEDULED
    assert lines[2:] == [
        f"reconciled {p.run.name}: was SCHEDULED, never submitted (the command that created it stopped first): KILLED"
        for p in planned
    ]
    client = MlflowClient(uri)
    for i, p in enumerate(written):
        history = sorted((m.step, m.value) for m in client.get_metric_history(p.child.run_id, "train/loss"))
        assert history == [(step, 1.0 / step + i) for step in range(1, 6)]
    assert client.get_metric_history(planned[2].child.run_id, "train/loss") == []

    again = _cli("sync", str(spec_path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-800:]
    assert again.stdout.strip() == f"sweep {spec.name}: every run directory is mirrored already"
    assert {MlflowClient(uri).get_run(p.child.run_id).info.status for p in planned} == {"KILLED"}
    assert all(len(client.get_metric_history(p.child.run_id, "train/loss")) == 5 for p in written)  # sent once


def test_a_run_deleted_in_mlflow_is_one_line_in_status_and_sync_with_the_way_back(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    spec = load_spec(spec_path)
    [first, *_] = plan(spec, spec.tracking_uri, dry_run=False)
    client = MlflowClient(spec.tracking_uri)
    client.delete_run(first.child.run_id)  # deleted in the UI; its run directory is not
    out = _cli("sync", str(spec_path), cwd=tmp_path)
    assert out.returncode == 2
    way = f"restore it (`mlflow runs restore --run-id {first.child.run_id}`), then `experiments sync SPEC`"
    assert _error_line(out) == f"error: {first.run.run_dir}: its MLflow run {first.child.run_id} was deleted in " + (
        f"{spec.tracking_uri}; {way}"
    )
    status = _cli("status", str(spec_path), cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-800:]
    assert f"was deleted in {spec.tracking_uri}; {way} (1 run dir(s) so)" in status.stdout
    assert re.search(rf"{re.escape(first.run.name)} +SCHEDULED \(not in MLflow\)", status.stdout), status.stdout
    client.restore_run(first.child.run_id)
    assert _cli("sync", str(spec_path), cwd=tmp_path).returncode == 0


def test_cancel_stops_a_local_sweep_its_running_run_checkpoints_and_its_queued_run_never_starts(
    tmp_path: Path,
) -> None:
    """`experiments cancel` of a local sweep: the training run gets SIGTERM (checkpoint at its iteration, KILLED,
    never FINISHED) and the run waiting in the sweep's queue is skipped, not started later."""
    grid = "grid:\n  model.backbone: [resnet50]\n  train.seed: [0, 1]\nexecutor: {local: {parallelism: 1}}\n"
    spec = _spec(tmp_path, grid)
    text = spec.read_text().replace("train.iterations: 6", "train.iterations: 400\n  train.checkpoint_every: 3")
    spec.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "experiments", "sweep", str(spec), "--executor", "local"]
    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        loaded = load_spec(spec)
        first, second = (r for r in sorted(plan(loaded, loaded.tracking_uri, dry_run=True), key=lambda p: p.run.name))
        log = ""
        for line in sweep.stdout:  # the store exists (made by the sweep) once a run starts
            log += line
            if line.startswith("  start "):
                break
        deadline = time.monotonic() + 180
        while not (first.run.run_dir / "checkpoint.pt").exists():  # its engine is in the loop
            assert time.monotonic() < deadline and sweep.poll() is None, log
            time.sleep(0.2)
        out = _cli("cancel", str(spec), cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == "cancelled 2 run(s)", out.stdout + out.stderr
        log += sweep.communicate(timeout=120)[0]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert "  skip  " in log and ": cancelled" in log and log.count("  start ") == 1, log
    runs = {r.data.tags["config_hash"]: r for r in MlflowClient(loaded.tracking_uri).search_runs(
        [MlflowClient(loaded.tracking_uri).get_experiment_by_name(loaded.name).experiment_id],
        "tags.config_hash != ''",
    )}  # fmt: skip
    assert runs[first.run.config_hash].info.status == "KILLED"
    assert runs[second.run.config_hash].info.status == "KILLED"
    assert 0 < load_checkpoint(first.run.run_dir / "checkpoint.pt")["iteration"] < 400
    assert not (second.run.run_dir / "checkpoint.pt").exists()
