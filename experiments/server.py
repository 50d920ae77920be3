"""`experiments server`: an MLflow tracking server for a cluster (login or service node), small footprint."""

from __future__ import annotations

import contextlib
import errno
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
from experiments.store.uri import driver_uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def server_command(artifact_root: Path, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line; the backend URI goes in the environment (see ``server_env``)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
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


def server_env(backend_uri: str) -> dict[str, str]:
    """The server's environment: the backend URI as MLFLOW_BACKEND_STORE_URI, not on the command line, which every
    user of a login node can read with ``ps`` (a database URI may hold a password); background jobs off."""
    return {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": driver_uri(backend_uri),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def _last_line(log: Path | None) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log else []
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]}" if lines else ""


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
    _check_port_free(host, port)
    artifact_root.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below: the child has its own copy)
    try:
        proc = subprocess.Popen(
            server_command(artifact_root, host, port),
            env=server_env(backend_uri),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log:
            out.close()
    try:
        _wait_healthy(proc, host, port, log, timeout_s)
    except BaseException:  # not answering, or Ctrl-C while starting: the server is in its own session, stop it
        stop_server(proc)
        raise
    return proc


def _check_port_free(host: str, port: int) -> None:
    """Another process listening on the port would answer /health in our server's place: refuse to start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ExperimentsError(
                    f"port {port} on {host} is in use (another server?); stop it or choose another --port"
                ) from None
            raise ExperimentsError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def _wait_healthy(proc: subprocess.Popen, host: str, port: int, log: Path | None, timeout_s: float) -> None:
    probe = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # the address it listens on
    url = f"http://{'[' + probe + ']' if ':' in probe else probe}:{port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ExperimentsError(
                f"mlflow server exited with status {proc.returncode} (log: {log or 'not kept'}){_last_line(log)}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200 and proc.poll() is None:  # ours answered, not a server that took the port
                return
        time.sleep(0.5)
    raise ExperimentsError(f"mlflow server on port {port} did not answer /health within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
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
