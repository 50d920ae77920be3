"""`make notebook` starts JupyterLab as root (containers run as root; jupyter refuses root without --allow-root),
serving the repository root: the Makefile's own command line is run, briefly, on a free port."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import REPO

STARTED = "is running at"
START_S = 60  # two loaded cores: JupyterLab starts in 3-10 s


def notebook_command(demo_dir: Path, extra: str) -> str:
    """The recipe line(s) `make notebook` runs, as make prints them (-n: nothing runs, the venv is not touched)."""
    venv = Path(sys.executable).parent.parent  # this interpreter's venv holds jupyter
    args = ["make", "-s", "-n", "notebook", f"VENV={venv}", f"DEMO_DIR={demo_dir}", f"NOTEBOOK_ARGS={extra}"]
    printed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = printed.replace("\\\n", " ").splitlines()
    return next(line for line in lines if "jupyter lab" in line)


def test_make_notebook_serves_the_repository_root_as_root(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").touch()
    extra = "--no-browser --ServerApp.port=0 --ServerApp.token=test --ServerApp.open_browser=False"
    command = notebook_command(tmp_path, extra)
    assert "--allow-root" in shlex.split(command) and f"--ServerApp.root_dir={REPO}" in shlex.split(command)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "d")}
    server = subprocess.Popen(
        ["bash", "-c", f"exec env {command}"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    log: list[str] = []
    try:
        deadline = time.monotonic() + START_S
        for line in server.stderr:
            log.append(line)
            if STARTED in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    text = "".join(log)
    if os.geteuid() == 0:
        assert "Running as root is not recommended" not in text, text[-2000:]
    assert STARTED in text, text[-2000:]
    assert f"Serving notebooks from local directory: {REPO}" in text, text[-2000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="jupyter's root refusal shows only as root")
def test_without_allow_root_jupyter_refuses_root(tmp_path: Path) -> None:
    """The check the Makefile's flag answers (if jupyter stopped refusing root, the flag could go)."""
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    done = subprocess.run(
        [str(venv / "bin" / "jupyter"), "lab", "--no-browser", "--ServerApp.port=0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_S,
    )
    assert done.returncode != 0 and "Use --allow-root to bypass" in done.stderr
