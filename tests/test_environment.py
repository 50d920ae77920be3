"""environment.yml (conda, for clusters) and pyproject.toml (pip) pin the same versions."""

from __future__ import annotations

import tomllib
import yaml
from tiny import REPO


def test_conda_environment_agrees_with_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert set(project["dependencies"]) <= set(pip), set(project["dependencies"]) - set(pip)
    dev = {spec.split(">")[0].split("=")[0]: spec for spec in project["optional-dependencies"]["dev"]}
    for spec in pip:
        if spec.startswith("-e") or spec in project["dependencies"]:
            continue
        name = spec.split(">")[0].split("=")[0]
        assert dev.get(name) == spec, f"environment.yml {spec!r} is not pinned the same in pyproject.toml"
    major_minor = tuple(int(x) for x in conda_python.split("=")[1].split("."))
    assert major_minor >= tuple(int(x) for x in project["requires-python"].lstrip(">=").split("."))
