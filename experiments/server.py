"""`experiments server`: an MLflow tracking server for a cluster (login or service node), small footprint."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from experiments.errors import ExperimentsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def server_command(backend_uri: str, artifact_root: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifact_root),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_server(
    backend_uri: str,
    artifact_root: Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    log: Path | None = None,
    timeout_s: float = 90,
) -> subprocess.Popen:
    """Start `mlflow server` and wait until /health answers; warn when it is reachable from other hosts."""
    if not _is_loopback(host):
        print(
            f"warning: the MLflow server is exposed on {host}:{port}: anyone who can reach this port can read "
            "and write runs (MLflow has no authentication here); prefer 127.0.0.1 and an SSH tunnel",
            file=sys.stderr,
            flush=True,
        )
    artifact_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the server outlives this function)
    proc = subprocess.Popen(
        server_command(backend_uri, artifact_root, host, port),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ExperimentsError(f"mlflow server exited with status {proc.returncode} (log: {log or 'not kept'})")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return proc
        time.sleep(0.5)
    stop_server(proc)
    raise ExperimentsError(f"mlflow server on port {port} did not answer /health within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@contextlib.contextmanager
def running_server(
    backend_uri: str, artifact_root: Path, host: str = "127.0.0.1", port: int | None = None, log: Path | None = None
) -> Iterator[str]:
    """A server for the duration of a block; yields its http URI."""
    port = port or free_port()
    proc = start_server(backend_uri, artifact_root, host, port, log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
