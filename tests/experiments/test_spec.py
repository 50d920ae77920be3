"""Sweep specs: expansion by config hash, and bad specs named in one line with nothing submitted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import study_spec_file

from experiments.errors import ExperimentsError
from experiments.spec import expand_grid, load_spec

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "experiments" / "sweeps"
STUDY = SWEEPS / "r50_vs_r101_cityscapes.yaml"


def test_the_study_expands_to_32_distinct_runs() -> None:
    spec = load_spec(SWEEPS / "r50_vs_r101_cityscapes.yaml")
    runs = expand_grid(spec)
    assert len(runs) == 32 and len({r.config_hash for r in runs}) == 32
    assert {r.config.model.backbone for r in runs} == {"resnet50", "resnet101"}
    assert {r.config.train.iterations for r in runs} == {40000} and spec.margin == 0.5
    assert runs[0].name == "backbone=resnet50,iterations=40000,seed=0" and runs[0].run_dir.name == runs[0].config_hash
    schedules = expand_grid(load_spec(SWEEPS / "r50_vs_r101_schedules.yaml"))
    assert sorted({r.config.train.iterations for r in schedules}) == [20000, 40000, 80000] and len(schedules) == 18
    assert spec.slurm.gpus_per_node == 2 and spec.slurm.tasks_per_node == 2
    again = expand_grid(load_spec(SWEEPS / "r50_vs_r101_cityscapes.yaml"))
    assert [r.config_hash for r in again] == [r.config_hash for r in runs]  # identity is stable


def _spec(tmp_path: Path, body: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"name: t\nbase: {REPO / 'configs' / 'synthetic_tiny.yaml'}\n{body}")
    return path


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            "grid: {model.backbon: [resnet50]}\n",
            "grid.model.backbon is not a config key (did you mean model.backbone?)",
        ),
        ("grid: {}\n", "grid is empty"),
        ("grid: {train.seed: []}\n", "grid.train.seed must be a non-empty list"),
        ("grid: {train.seed: [0]}\nexecutor: {slurmm: {}}\n", "unknown key 'slurmm' (did you mean slurm?)"),
        (
            "grid: {train.seed: [0]}\nexecutor: {slurm: {gpus_per_node: two}}\n",
            "executor.slurm.gpus_per_node: expected int",
        ),
        ("grid: {train.seed: [0]}\nextra: 1\n", "unknown key 'extra'"),
        ("grid: {train.seed: [x]}\n", "train.seed must be an integer"),
        ("grid: {train.seed: [0]}\nanalysis: {margn: 0.5}\n", "unknown key 'margn' (did you mean margin?)"),
        ("grid: {train.seed: [0]}\nanalysis: {margin: -1}\n", "analysis.margin must be a positive number"),
        ("grid: {train.seed: [0]}\nanalysis: {margin: .nan}\n", "analysis.margin must be a positive number"),
        ("grid: {train.seed: [0]}\nanalysis: 0.5\n", "analysis must be a mapping"),
        ("grid: {train.seed: [0]}\ngrid: {train.seed: [1]}\n", "line 4: duplicate key 'grid' (first at line 3)"),
        ("grid:\n  train.seed: [0]\n  train.seed: [1]\n", "line 5: duplicate key 'train.seed' (first at line 4)"),
        ("grid: {1: [0]}\n", "grid key 1 must be a string"),
        ("grid: {null: [0]}\n", "grid key None must be a string"),
        ("grid: {train.seed: [0]}\noverrides: {[a]: 1}\n", "not valid YAML"),
        ("grid: {train.seed: [0]}\noverrides: {true: 1}\n", "overrides key True must be a string"),
        ("grid: {train.seed: [0]}\noverrides: [train.seed]\n", "overrides must be a mapping"),
        ("grid: {train.seed: [-1]}\n", "train.seed must be in 0..4294967295"),
        ("grid: {optim.lr: [.nan]}\n", "optim.lr must be a finite number"),
        ("grid: {model.num_classes: [19, 21]}\n", "model.num_classes must be 19"),
        ("grid: {train.seed: [0]}\nexecutor: {slurm: {mem: 4G, mem: 8G}}\n", "duplicate key 'mem'"),
        # millions of runs, refused from the list lengths before one config is built
        (
            "grid:\n  train.seed: ["
            + ", ".join(map(str, range(1000)))
            + "]\n  optim.lr: ["
            + ", ".join(f"0.0{i + 1}" for i in range(1000))
            + "]\n",
            "the grid expands to 1,000,000 runs; at most 10,000 per spec (split it)",
        ),
    ],
)
def test_bad_specs_are_named(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ExperimentsError) as err:
        expand_grid(load_spec(_spec(tmp_path, body)))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_directory_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(ExperimentsError, match="is a directory, expected a YAML file"):
        load_spec(tmp_path)


def test_relative_paths_in_a_spec_are_the_specs_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """base, runs_root, a sqlite tracking URI and the config's paths in overrides and grid resolve against the spec's
    folder; absolute paths and model.weights' names stay as written."""
    folder = tmp_path / "study" / "specs"
    folder.mkdir(parents=True)
    (folder / "base.yaml").write_text((REPO / "configs" / "synthetic_tiny.yaml").read_text())
    path = folder / "spec.yaml"
    path.write_text(
        "name: rel\nbase: base.yaml\nruns_root: ../runs\ntracking: {uri: 'sqlite:///../mlflow.db'}\n"
        "overrides: {data: {cache: cache}, model.weights: imagenet}\n"
        "grid: {data.root: [data, /abs/data, ../other], model.backbone: [resnet50]}\n"
    )
    seen = []
    for cwd, given in ((tmp_path, path), (folder, Path("spec.yaml")), (REPO, path)):
        monkeypatch.chdir(cwd)
        spec = load_spec(given)
        runs = expand_grid(spec)
        seen.append(
            (spec.base, spec.runs_root, spec.tracking_uri, [(r.config.data.root, r.config.data.cache) for r in runs])
        )
        assert {r.config.model.weights for r in runs} == {"imagenet"}
    study = tmp_path / "study"
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][:3] == (folder / "base.yaml", study / "runs", f"sqlite:///{study / 'mlflow.db'}")
    cache = str(folder / "cache")
    assert seen[0][3] == [(str(folder / "data"), cache), ("/abs/data", cache), (str(study / "other"), cache)]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_bad_inputs_submit_nothing(tmp_path: Path) -> None:
    good = _spec(tmp_path, "grid: {train.seed: [0]}\n")
    cases = [
        (["sweep", str(tmp_path / "missing.yaml")], "sweep spec not found"),
        (["sweep", str(_spec(tmp_path, "grid: {}\n", "empty.yaml"))], "grid is empty"),
        (["sweep", str(good), "--executor", "kubernetes"], "invalid choice: 'kubernetes'"),
        (
            ["sweep", str(good), "--tracking-uri", "http://127.0.0.1:9"],
            "tracking URI http://127.0.0.1:9 does not answer",
        ),
        (["sweep", str(good), "--tracking-uri", "./mlruns"], "MLflow's file store is deprecated"),
    ]
    for args, needle in cases:
        out = _cli(*args, cwd=tmp_path)
        assert out.returncode != 0 and needle in out.stderr.strip().splitlines()[-1], (args, out.stderr[-300:])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_slurm_without_sbatch_is_refused(tmp_path: Path) -> None:
    good = _spec(tmp_path, "grid: {train.seed: [0]}\n")
    env_path = "/nonexistent"
    out = subprocess.run(
        [sys.executable, "-m", "experiments", "sweep", str(good), "--executor", "slurm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": env_path, "HOME": str(tmp_path)},
    )
    assert out.returncode == 2 and "sbatch is not on PATH" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_creates_nothing(tmp_path: Path) -> None:
    out = _cli("sweep", str(SWEEPS / "r50_vs_r101_cityscapes.yaml"), "--dry-run", "--executor", "local", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("study: look 1 needs 4 seeds per backbone: 0/8 runs FINISHED\n")  # sequential
    assert "dry run: 8 runs, nothing submitted" in out.stdout
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("sequential", "message"),
    [
        ({"looks": [4, 4, 16]}, "analysis.sequential.looks must be 1 to 6 increasing seed counts"),
        ({"looks": [4, 8, 12]}, "analysis.sequential.looks must end at the grid's 16 seeds, got 12"),
        (
            {"looks": [16], "spending": "haybittle"},
            "analysis.sequential.spending must be one of obrien-fleming, pocock",
        ),
        ({"looks": [8, 16], "futility": "yes"}, "analysis.sequential.futility must be true or false"),
        ({"looks": [8, 16], "max_seeds": 12}, "analysis.sequential.max_seeds must be a whole number from the last"),
        ({"looks": [8, 16], "max_seeds": 10**9}, "max_seeds must be a whole number from the last look (16) to 1000"),
        ({"looks": [8, 16], "max_seeds": 32}, "analysis.sequential.planning_sd: needed when max_seeds"),
        ({"looks": [8, 16], "planning_sd": -1}, "analysis.sequential.planning_sd must be a positive number"),
        ({"look": [8, 16]}, "analysis.sequential: unknown key 'look' (did you mean looks?)"),
        ([4, 8], "analysis.sequential must be a mapping"),
    ],
)
def test_a_bad_sequential_section_is_one_line_naming_the_field(tmp_path: Path, sequential, message: str) -> None:
    with pytest.raises(ExperimentsError) as err:
        load_spec(study_spec_file(tmp_path, {"margin": 0.5, "sequential": sequential}))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("analysis", "grid", "message"),
    [
        ({}, {}, "analysis.margin is needed by analysis.sequential"),
        ({"margin": 0.5}, {"model.backbone": ["resnet50"]}, "needs grid.model.backbone, the two backbones compared"),
        ({"margin": 0.5}, {"train.seed": [0, 0, *range(1, 15)]}, "grid.train.seed, a list of distinct whole"),
    ],
)
def test_a_sequential_study_compares_one_configuration_of_two_backbones(
    tmp_path: Path, analysis: dict, grid: dict, message: str
) -> None:
    path = study_spec_file(tmp_path, {**analysis, "sequential": {"looks": [8, 16]}})
    spec = yaml.safe_load(path.read_text())
    spec["grid"] |= grid
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    with pytest.raises(ExperimentsError) as err:
        load_spec(path)
    assert message in str(err.value) and "\n" not in str(err.value)
