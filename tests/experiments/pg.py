"""A private PostgreSQL cluster for tests: initdb + pg_ctl in a fresh temporary directory, listening on 127.0.0.1
(a free port) and a private unix socket directory, password authentication only, stopped by its PID file.

PostgreSQL refuses to run as root: as root (CI) the server runs as the `postgres` system user of Debian's package
(else `nobody`) through `runuser`, in a directory owned by that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from experiments.server import free_port

USER = "mlflow"  # the superuser of the private cluster (a database role, not an OS user)
DATABASE = "mlflow"
SETTINGS = {  # a throw-away test cluster: small, no durability
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "40",
    "shared_buffers": "'16MB'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}


def find_bin_dir() -> Path | None:
    """$PG_BIN, else the newest /usr/lib/postgresql/<version>/bin (Debian), else initdb on PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def require_bin_dir() -> Path:
    """The PostgreSQL binaries; missing → skip, except in CI (which installs them) where it is a failure."""
    bin_dir = find_bin_dir()
    if bin_dir is None or not (bin_dir / "pg_ctl").is_file():
        message = "PostgreSQL binaries not found: `apt-get install postgresql` (Debian) or set PG_BIN"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return bin_dir


def _service_user() -> str | None:
    """The OS user the server runs as when we are root (None: ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists")


@dataclass
class PostgresCluster:
    root: Path  # private directory: data/, socket/, postgres.log
    bin_dir: Path
    port: int
    password: str
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def uri(self) -> str:
        """SQLAlchemy URI of the test database, over TCP on loopback."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self, database: str = DATABASE) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname=database, connect_timeout=10
        )

    def pid(self) -> int | None:
        """The postmaster's PID from its PID file (None when it is not running)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return subprocess.run(
            [*prefix, str(self.bin_dir / argv[0]), *argv[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
        )

    def init(self) -> None:
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        self._chown(password_file)
        password_file.chmod(0o600)
        try:
            done = self._run(
                "initdb", "-D", str(self.data_dir), "-U", USER, f"--pwfile={password_file}", "--auth=scram-sha-256",
                "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
            )  # fmt: skip
        finally:
            password_file.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        with open(self.data_dir / "postgresql.conf", "a") as conf:  # appended: the file keeps its owner
            conf.write("\n# private test cluster (tests/experiments/pg.py)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in SETTINGS.items())
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")

    def start(self) -> None:
        """Start on ``self.port`` and wait until it accepts connections."""
        done = self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", "60", "-o", f"-p {self.port}"
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{log[-2000:]}")

    def create_database(self) -> None:
        connection = self.connect("postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            connection.close()

    def stop(self) -> None:
        """`pg_ctl stop -m fast`, then wait for the postmaster named by the PID file to exit; if it does not,
        SIGQUIT (immediate shutdown) and SIGKILL to that PID (never by name)."""
        pid = self.pid()
        if pid is None:
            return
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", timeout=60)
        for sig in (None, signal.SIGQUIT, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if not _alive(pid):
                return

    def _chown(self, path: Path) -> None:
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def running_postgres(bin_dir: Path, keep_log: Path | None = None, attempts: int = 3) -> Iterator[PostgresCluster]:
    """A fresh cluster with an empty ``mlflow`` database for the duration of a block; stopped and deleted after it
    (even when the block fails), its log copied to ``keep_log`` first."""
    # a short path under /tmp: unix socket paths are limited to ~107 bytes, pytest's tmp_path can be longer
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))
    cluster = PostgresCluster(root, bin_dir, 0, secrets.token_urlsafe(18), _service_user())
    try:
        cluster._chown(root)
        cluster.socket_dir.mkdir(mode=0o700)
        cluster._chown(cluster.socket_dir)
        cluster.init()
        for attempt in range(attempts):  # the free port may be taken between free_port() and the bind
            cluster.port = free_port()
            try:
                cluster.start()
                break
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        cluster.create_database()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if keep_log is not None and cluster.log.exists():
                shutil.copyfile(cluster.log, keep_log)
            shutil.rmtree(root, ignore_errors=True)
