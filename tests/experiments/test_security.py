"""Security properties on real parts: a secret in the environment never lands on disk, the submitit folder (pickled
callables, logs) is private, YAML cannot run code, tracking URIs are printed without their password, and
`experiments server` binds to loopback by default, warns in one line when exposed and refuses an http backend."""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pg import require_bin_dir, running_postgres
from test_ui_browser import write_spec
from tiny import REPO, TINY

from experiments.cli import build_parser
from experiments.server import free_port
from experiments.spec import load_spec
from experiments.store import ensure_experiment
from experiments.sweep import make_executor

PAYLOAD = '!!python/object/apply:os.system ["touch {marker}"]'


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


def _cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env or _env(), timeout=600)


def _error_line(out: subprocess.CompletedProcess) -> str:
    """The one stderr line of a refused command (exit 2)."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (out.returncode, out.stderr)
    return lines[0]


def _holds(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    """Whether the file's bytes contain ``needle`` (read in chunks: checkpoints are hundreds of MB)."""
    tail = b""
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-(len(needle) - 1) :]
    return False


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and _holds(p, needle)]


@pytest.mark.slow
def test_a_local_sweep_writes_no_secret_and_keeps_its_submitit_folder_private(tmp_path: Path) -> None:
    token = f"pw-{secrets.token_hex(16)}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, "security", uri, local={"parallelism": 2, "threads_per_job": 1})
    ensure_experiment(uri, "security", artifact_location=(tmp_path / "artifacts").as_uri())
    env = _env(CITYSCAPES_USERNAME="someone@example.org", CITYSCAPES_PASSWORD=token)
    out = _cli("experiments", "sweep", str(spec), "--executor", "local", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert token not in out.stdout + out.stderr

    submitit_dir = tmp_path / "runs" / "security" / ".submitit"
    assert list(submitit_dir.rglob("*.pkl")) and list(submitit_dir.rglob("*.out"))
    assert list((tmp_path / "artifacts").rglob("config.yaml")) and (tmp_path / "mlflow.db").is_file()
    # the scan reads what was really written: the pickled jobs hold their tracking URI as plain bytes
    assert _files_holding(submitit_dir, uri.encode()), "no pickle holds the tracking URI: the scan would be blind"
    assert _files_holding(tmp_path, token.encode()) == []
    assert stat.S_IMODE(submitit_dir.stat().st_mode) == 0o700


def test_the_submitit_folder_is_made_private_even_when_it_exists(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "private", f"sqlite:///{tmp_path / 'mlflow.db'}"))
    fresh = tmp_path / "runs" / "private" / ".submitit"
    loose = tmp_path / "older" / ".submitit"  # left world-readable by an older version
    loose.mkdir(parents=True, mode=0o755)
    loose.chmod(0o755)
    for folder in (fresh, loose):
        make_executor("local", spec, folder)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def _yaml_case(case: str, tmp_path: Path, marker: Path) -> tuple[str, list[str]]:
    """(module, argv) feeding the payload to one YAML reader; its files are written in tmp_path."""
    payload = PAYLOAD.format(marker=marker)
    config, spec = tmp_path / "config.yaml", tmp_path / "spec.yaml"
    good_spec = f"name: yaml_tags\nbase: {TINY}\ngrid:\n  train.seed: [0]\nruns_root: runs\n"
    if case == "config file":
        config.write_text(f"model:\n  backbone: {payload}\n")
        return "deeplab", ["train", str(config), "--run-dir", str(tmp_path / "runs")]
    if case == "--set value":
        return "deeplab", ["train", str(TINY), "--run-dir", str(tmp_path / "runs"), "--set", f"train.seed={payload}"]
    if case == "sweep spec":
        spec.write_text(good_spec.replace("name: yaml_tags", f"name: {payload}"))
    else:  # the sweep's base config
        config.write_text(f"model:\n  backbone: {payload}\n")
        spec.write_text(good_spec.replace(str(TINY), str(config)))
    return "experiments", [
        "sweep",
        str(spec),
        "--executor",
        "local",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]


@pytest.mark.parametrize("case", ["config file", "--set value", "sweep spec", "sweep base config"])
def test_yaml_with_a_python_tag_is_refused_in_one_line_and_runs_nothing(tmp_path: Path, case: str) -> None:
    control = tmp_path / "control"
    yaml.unsafe_load(PAYLOAD.format(marker=control))  # the payload is live: an unsafe loader runs it
    assert control.exists()
    marker = tmp_path / "marker"
    module, argv = _yaml_case(case, tmp_path, marker)
    line = _error_line(_cli(module, *argv, cwd=tmp_path))
    assert "not valid YAML" in line, line
    assert not marker.exists(), "the YAML ran a command"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://someone:{token}@127.0.0.1:1/mlflow",
        "http://someone:{token}@127.0.0.1:9",
        "mysql://someone:{token}@127.0.0.1/mlflow",
    ],
)
def test_a_refused_tracking_uri_is_printed_without_its_password(tmp_path: Path, uri: str) -> None:
    token = f"pw-{secrets.token_hex(16)}"
    spec = write_spec(tmp_path, "redact", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = _cli("experiments", "sweep", str(spec), "--tracking-uri", uri.format(token=token), cwd=tmp_path)
    line = _error_line(out)
    assert "someone:***@127.0.0.1" in line, line
    assert token not in out.stdout + out.stderr


def _listening(port: int) -> set[str]:
    """The local IPv4 addresses in LISTEN state on ``port`` (from /proc/net/tcp)."""
    found = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


@contextlib.contextmanager
def _server_cli(*args: str, cwd: Path) -> Iterator[subprocess.Popen]:
    """`python -m experiments server ARGS`; Ctrl-C (which stops its mlflow server too) when the block ends."""
    cmd = [sys.executable, "-m", "experiments", "server", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _announcement(proc: subprocess.Popen, timeout_s: float = 180) -> str:
    """The server command's first stdout line (printed once /health answers)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    assert line, f"no announcement within {timeout_s} s (exit {proc.poll()}): {proc.stderr.read()[-2000:]}"
    return line.strip()


def _stop(proc: subprocess.Popen, signum: int = signal.SIGINT) -> str:
    """Signal the server command (Ctrl-C by default); its stderr (asserted clean exit)."""
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 0
    return proc.stderr.read()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["Ctrl-C", "kill", "hang-up"])
def test_server_listens_on_loopback_by_default_and_a_stop_signal_stops_its_mlflow_server(
    tmp_path: Path, signum: int
) -> None:
    assert build_parser().parse_args(["server"]).host == "127.0.0.1"
    port = free_port()
    store = f"--backend-store-uri=sqlite:///{tmp_path / 'mlflow.db'}"
    with _server_cli(store, f"--artifact-root={tmp_path / 'art'}", f"--port={port}", cwd=tmp_path) as proc:
        line = _announcement(proc)
        assert line.startswith(f"MLflow server on http://127.0.0.1:{port} (backend sqlite:///"), line
        assert _listening(port) == {"127.0.0.1"}
        assert "warning" not in _stop(proc, signum)
    assert _listening(port) == set()  # the mlflow server (its own session) is gone, not orphaned
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_port_in_use_is_an_error_not_a_success_line_for_another_server(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _cli("experiments", "server", f"--port={port}", f"--artifact-root={tmp_path / 'art'}", cwd=tmp_path)
    assert out.returncode == 2 and "MLflow server on" not in out.stdout
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is in use (another server?); stop it or choose another --port"
    )


def test_server_on_a_non_loopback_host_warns_in_one_line(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is not an address of this host: the warning comes first, then the bind fails (checked
    # before mlflow starts)
    store = f"--backend-store-uri=sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["server", "--host=192.0.2.1", f"--port={free_port()}", store, f"--artifact-root={tmp_path / 'art'}"]
    out = _cli("experiments", *argv, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert [line for line in lines if "warning" in line] == lines[:1], out.stderr
    assert lines[0].startswith("warning: the MLflow server is exposed on 192.0.2.1:"), lines[0]
    assert out.returncode == 2 and lines[-1].startswith("error: cannot listen on 192.0.2.1:"), out.stderr
    assert lines[-1].endswith(": Cannot assign requested address") and len(lines) == 2, out.stderr


@pytest.mark.parametrize("source", ["MLFLOW_TRACKING_URI", "--backend-store-uri"])
def test_server_refuses_an_http_backend_in_one_line(tmp_path: Path, source: str) -> None:
    token = f"pw-{secrets.token_hex(16)}"
    uri = f"http://someone:{token}@127.0.0.1:{free_port()}"
    argv = ["server", f"--artifact-root={tmp_path / 'art'}", f"--port={free_port()}"]
    if source == "MLFLOW_TRACKING_URI":
        out = _cli("experiments", *argv, cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=uri))
    else:
        out = _cli("experiments", *argv, f"--backend-store-uri={uri}", cwd=tmp_path)
    line = _error_line(out)
    assert line.startswith(f"error: {source}") and "not a backend store" in line, line
    assert "someone:***@127.0.0.1" in line and token not in out.stdout + out.stderr
    assert not (tmp_path / "art").exists(), "a server was started"


def test_server_checks_its_database_backend_first_in_one_line(tmp_path: Path) -> None:
    """A PostgreSQL backend that does not answer (nothing listens on the port) fails before mlflow server starts,
    naming the URI without its password; a sqlite backend in a missing directory likewise."""
    token = f"pw-{secrets.token_hex(16)}"
    argv = ["server", f"--artifact-root={tmp_path / 'art'}", f"--port={free_port()}"]
    uri = f"postgresql://lab:{token}@127.0.0.1:{free_port()}/mlflow"
    out = _cli("experiments", *argv, f"--backend-store-uri={uri}", cwd=tmp_path)
    line = _error_line(out)
    assert line.startswith("error: tracking URI postgresql") and "lab:***@127.0.0.1:" in line, line
    assert "does not answer: OperationalError: connection to server" in line, line
    assert token not in out.stdout + out.stderr
    out = _cli(
        "experiments", *argv, f"--backend-store-uri=sqlite:///{tmp_path / 'missing' / 'mlflow.db'}", cwd=tmp_path
    )
    line = _error_line(out)
    assert line.startswith("error: tracking URI sqlite:///") and "does not exist or is not writable" in line, line
    assert not (tmp_path / "art").exists(), "a server was started"


@pytest.mark.slow
@pytest.mark.postgres
def test_server_prints_its_postgresql_backend_without_the_password(tmp_path: Path) -> None:
    with running_postgres(require_bin_dir()) as pg:
        args = [f"--backend-store-uri={pg.uri}", f"--artifact-root={tmp_path / 'art'}", f"--port={free_port()}"]
        with _server_cli(*args, cwd=tmp_path) as proc:
            line = _announcement(proc)
            assert f"mlflow:***@127.0.0.1:{pg.port}/mlflow)" in line, line
            assert pg.password not in line + _stop(proc)
