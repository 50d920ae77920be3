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
import logging
import os
import sqlite3
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


class _RaisedToUs(logging.Filter):
    """MLflow logs a traceback for each database error before raising it to us (MlflowException); we report it
    once: one line from a command (``store_error_line``), the run directory's record in a job. A filter, not a
    level: the logging configuration of MLflow's migrations resets levels."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


logging.getLogger("mlflow.store.db.utils").addFilter(_RaisedToUs())

_identity: dict[Path, tuple[int, int]] = {}  # sqlite file → (st_dev, st_ino) when this process first opened it
_clients: dict[str, MlflowClient] = {}
_guard = threading.Lock()
_last = threading.local()  # .db: the sqlite file this thread's latest client call went to (None: a server)


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
    _last.db = db.absolute() if db is not None else None
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
            client = _create(uri, db)
        else:
            with store_lock(db, exclusive=False):
                if _file_identity(db) is None:
                    raise StoreGone(f"tracking store {db} does not exist (moved or deleted?); nothing was created")
                client = MlflowClient(uri)
        _identity[db] = _file_identity(db)  # type: ignore[assignment]
        _clients[uri] = client
        return client


def _create(uri: str, db: Path) -> MlflowClient:
    """Create the sqlite store under its lock; when that fails (a full disk), the files made for it are removed
    again and the error is one line naming the database."""
    lock, journal = db.with_name(db.name + ".lock"), db.with_name(db.name + "-journal")
    made = [p for p in (db, journal, lock) if not p.exists()]
    try:
        with store_lock(db):
            client = MlflowClient(uri)  # creates the database and runs MLflow's migrations
            client.search_experiments(max_results=1)
        return client
    except Exception as err:
        cause = sqlite_cause(err)
        if cause is None and not isinstance(err, OSError):
            raise
        _drop_engine(uri)
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        raise ExperimentsError(f"tracking store {db}: cannot create it ({cause or err}); nothing was created") from None


def _drop_engine(uri: str) -> None:
    """Close MLflow's cached engine of a store that failed to be made: its pooled connection would keep the removed
    file (and its disk space) open, and a later client would write into it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def sqlite_cause(err: BaseException) -> sqlite3.Error | None:
    """The sqlite error beneath an MLflow or SQLAlchemy one (a full disk, a read-only or locked file), else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, sqlite3.Error):
            return err
        seen.add(id(err))
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__
    return None


def store_error_line(err: BaseException) -> str | None:
    """One line for an error a sqlite store raised beneath MLflow (``database or disk is full``), naming the store
    this thread last opened a client on (every store call opens one just before it); None for any other error (a
    bug keeps its traceback)."""
    cause = sqlite_cause(err)
    if cause is None:
        return None
    return f"tracking store {getattr(_last, 'db', None) or 'sqlite'}: {cause}"


def _check_same(db: Path) -> None:
    now = _file_identity(db)
    if now is None:
        raise StoreGone(f"tracking store {db} has disappeared (deleted or moved?); it is not recreated")
    if now != _identity.get(db):
        raise StoreGone(f"tracking store {db} was replaced by another database; runs are not written into it")
