"""Where a report's numbers come from: when, which code, which store and experiment, and a link to each run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from experiments.code_version import git_state
from experiments.store import redact, sqlite_path

REPO = Path(__file__).resolve().parents[1]


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A markdown link to the run in the MLflow UI for a tracking server; the bare run id for a database."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"[{run_id}]({redact(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}`"


def provenance_lines(
    tracking_uri: str, experiment: str, runs: pd.DataFrame, now: dt.datetime | None = None
) -> list[str]:
    """The provenance block as markdown lines (password in the URI redacted)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    git = git_state(REPO)
    dirty = {"true": " (dirty: uncommitted changes)", "false": ""}.get(git["git.dirty"], " (dirty: unknown)")
    eid = runs.experiment_id.iloc[0] if len(runs) else "?"
    lines = [
        f"- written {now:%Y-%m-%d %H:%M} UTC by the analysis code at commit `{git['git.commit']}`{dirty}",
        f"- tracking URI `{redact(tracking_uri)}`, experiment `{experiment}` (id {eid}), {len(runs)} runs",
    ]
    if sqlite_path(tracking_uri) is not None:
        where = f"`mlflow ui --backend-store-uri {tracking_uri}` (run ids in the Runs table)"
    else:
        where = f"{redact(tracking_uri).rstrip('/')}/#/experiments/{eid} (links in the Runs table)"
    lines.append(f"- browse the runs: {where}")
    return lines
