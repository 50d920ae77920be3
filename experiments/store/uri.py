"""Tracking URIs: resolution, parsing and redaction (SQLAlchemy's URL parser), reachability."""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from experiments.errors import ExperimentsError

SCHEMES = ("sqlite", "http", "https", "postgresql", "postgresql+psycopg2")


def default_tracking_uri(project_dir: Path) -> str:
    return f"sqlite:///{Path(project_dir).resolve() / 'mlflow.db'}"


def _url(uri: str) -> sqlalchemy.engine.URL | None:
    try:
        return make_url(uri)
    except Exception:  # not a URL SQLAlchemy can parse (e.g. a bare path)
        return None


def redact(uri: str) -> str:
    """The URI with any password replaced by ``***``."""
    url = _url(uri)
    return url.render_as_string(hide_password=True) if url is not None and url.password else uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    url = _url(uri)
    return Path(url.database) if url is not None and url.drivername == "sqlite" and url.database else None


def is_database(uri: str) -> bool:
    """A store MLflow reaches through SQLAlchemy (sqlite, postgresql), not a tracking server."""
    url = _url(uri)
    return url is not None and url.drivername.split("+")[0] in ("sqlite", "postgresql")


def driver_uri(uri: str) -> str:
    """The URI with a PostgreSQL driver that is installed: SQLAlchemy ≥ 2.1 reads a bare ``postgresql://`` as
    psycopg 3, while this project installs psycopg2 (``psycopg2-binary``)."""
    url = _url(uri)
    if url is None or url.drivername != "postgresql" or importlib.util.find_spec("psycopg") is not None:
        return uri
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def resolve_tracking_uri(uri: str | None, project_dir: Path | None = None) -> str:
    """Explicit argument > MLFLOW_TRACKING_URI > sqlite file in the project directory. Always explicit."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(project_dir or Path.cwd())
    url = _url(uri)
    if url is None or url.drivername not in SCHEMES or (url.drivername == "sqlite" and not url.database):
        raise ExperimentsError(
            f"tracking URI {redact(uri)!r}: use sqlite:///ABS/PATH.db, http(s)://HOST:PORT or postgresql://… "
            "(MLflow's file store is deprecated)"
        )
    return driver_uri(uri)


def check_reachable(uri: str, timeout_s: float = 5.0, *, must_exist: bool = False) -> None:
    """Fail fast, with the URI in the message, when the tracking store cannot be reached. With ``must_exist`` a
    sqlite store must already be there (readers never create one)."""
    if (db := sqlite_path(uri)) is not None:
        if must_exist and not db.is_file():
            raise ExperimentsError(f"tracking store {db} does not exist (moved or deleted?); nothing was created")
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise ExperimentsError(f"tracking URI {uri}: directory {db.parent} does not exist or is not writable")
        return
    if uri.startswith("http"):
        _check_server(uri, timeout_s)
        return
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout_s)})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # any driver error means: not reachable
        raise ExperimentsError(f"tracking URI {redact(uri)} does not answer: {_driver_reason(err, uri)}") from None


def _check_server(uri: str, timeout_s: float) -> None:
    # an API call, not /health: MLflow 3 answers /health to any Host but refuses API calls (403) addressed to a
    # host name it does not allow, which would otherwise surface only inside the jobs
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}" + (
            " (MLflow refuses this host name: use the server's IP address or start it with MLFLOW_SERVER_ALLOWED_HOSTS)"
            if err.code == 403
            else ""
        )
    except (TimeoutError, urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err))
    raise ExperimentsError(f"tracking URI {redact(uri)} does not answer: {reason}")


def _driver_reason(err: Exception, uri: str) -> str:
    """The driver's first message line (e.g. "connection refused"), any password of ``uri`` blanked out."""
    detail = str(getattr(err, "orig", None) or err).strip().splitlines()
    reason = f"{err.__class__.__name__}: {detail[0].strip()[:200]}" if detail else err.__class__.__name__
    url = _url(uri)
    return reason.replace(url.password, "***") if url is not None and url.password else reason
