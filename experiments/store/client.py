"""The one door to a store: an MLflow client that never creates a sqlite store by accident.

MLflow creates a missing sqlite database (and its tables) on first use, and keeps pooled connections that write
into a database file that has since been deleted. So a sqlite store is opened only when its file exists and is
the file this process first opened (same device and inode); only ``create=True`` (a sweep, an import) makes a
new one, serialised by a flock on ``<db>.lock`` beside it: MLflow's schema migrations race when several
processes create one store at once. Readers take that lock shared for their first open.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

# MLflow 3 records usage telemetry around every client call and tries to send it out: 15-40 ms a call here, and
# compute nodes are usually offline anyway (an explicit setting wins)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A tracking server that accepts connections but never answers: MLflow waits 120 s per request and retries 7 times
# with backoff (~20 min). Every command here gives up after at most 3 × 20 s plus 6 s of backoff, with one line
# (a job spools its points meanwhile). An explicit setting wins.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")

from mlflow.tracking import MlflowClient

from experiments.errors import ExperimentsError
from experiments.store.uri import sqlite_path

_identity: dict[Path, tuple[int, int]] = {}  # sqlite file → (st_dev, st_ino) when this process first opened it
_clients: dict[str, MlflowClient] = {}
_guard = threading.Lock()


class StoreGone(ExperimentsError):
    """The sqlite store is not there, or is another file than the one this process has been using."""


def _file_identity(db: Path) -> tuple[int, int] | None:
    try:
        st = db.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino) if st.st_size > 0 else None  # 0 bytes: what a reconnect to a deleted file leaves


@contextlib.contextmanager
def store_lock(db: Path, exclusive: bool = True) -> Iterator[None]:
    """flock on ``<db>.lock``, made by the exclusive (creating) side; skipped where there is none to share or the
    directory is read-only."""
    try:
        fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | (os.O_CREAT if exclusive else 0), 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def open_client(uri: str, *, create: bool = False) -> MlflowClient:
    """A client on ``uri``. A sqlite store must exist (``create=True``: it is created once, under the lock) and
    be the same file as when this process first opened it; otherwise StoreGone."""
    db = sqlite_path(uri)
    if db is None:
        with _guard:
            if uri not in _clients:
                _clients[uri] = MlflowClient(uri)
            return _clients[uri]
    db = db.absolute()
    with _guard:
        if uri in _clients:
            _check_same(db)
            return _clients[uri]
        if create and _file_identity(db) is None:
            with store_lock(db):
                client = MlflowClient(uri)  # creates the database and runs MLflow's migrations
                client.search_experiments(max_results=1)
        else:
            with store_lock(db, exclusive=False):
                if _file_identity(db) is None:
                    raise StoreGone(f"tracking store {db} does not exist (moved or deleted?); nothing was created")
                client = MlflowClient(uri)
        _identity[db] = _file_identity(db)  # type: ignore[assignment]
        _clients[uri] = client
        return client


def _check_same(db: Path) -> None:
    now = _file_identity(db)
    if now is None:
        raise StoreGone(f"tracking store {db} has disappeared (deleted or moved?); it is not recreated")
    if now != _identity.get(db):
        raise StoreGone(f"tracking store {db} was replaced by another database; runs are not written into it")
