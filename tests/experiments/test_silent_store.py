"""A tracking server that accepts connections but never answers (a hung proxy, a stopped VM behind a live port):
every command that talks to the store gives up within seconds, in one line naming the URI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny import REPO

STUDY = REPO / "experiments" / "sweeps" / "r50_vs_r101_cityscapes.yaml"
GIVE_UP_S = 60  # what each command may take here, imports included (check_reachable's probe waits 5 s)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()


def test_every_store_command_gives_up_on_a_silent_server_in_one_line(silent_server: str, tmp_path: Path) -> None:
    uri = ["--tracking-uri", silent_server]
    commands = {
        "sweep": ["experiments", "sweep", str(STUDY), "--dry-run", *uri],
        "advance": ["experiments", "advance", str(STUDY), *uri],
        "status": ["experiments", "status", str(STUDY), *uri],
        "cancel": ["experiments", "cancel", str(STUDY), *uri],
        "report": ["analysis", "report", "--experiment", "x", "--out", str(tmp_path / "r"), *uri],
        "import-log": ["analysis", "import-log", str(tmp_path / "t.log"), "--experiment", "x", "--backbone",
                       "resnet50", *uri],
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.monotonic()
    procs = {
        name: subprocess.Popen([sys.executable, "-m", *argv], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, argv in commands.items()
    }  # fmt: skip
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=max(1, GIVE_UP_S - (time.monotonic() - started)) + 30)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"{name} still waits on a silent server after {time.monotonic() - started:.0f} s")
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and lines, (name, proc.returncode, err[-2000:])
        assert lines[-1].startswith(f"error: tracking URI {silent_server} does not answer"), (name, err[-2000:])
    assert time.monotonic() - started < GIVE_UP_S + 30


def test_plan_goes_on_without_a_silent_store_and_says_so(silent_server: str, tmp_path: Path) -> None:
    """The planner needs the store only for measured figures: it notes the silence and plans from the evidence."""
    argv = [sys.executable, "-m", "analysis", "plan", str(STUDY), "--replicates", "1000", "--tracking-uri"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([*argv, silent_server], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"store: nothing measured (tracking URI {silent_server} does not answer: timed out)" in out.stdout
