"""The production set-up, for real on one machine: a private PostgreSQL cluster as MLflow's backend store,
`mlflow server` in front of it (experiments.server), and a sweep whose jobs run on the local SLURM cluster and log
over HTTP. Every run and metric point is then read back from PostgreSQL itself."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pg import require_bin_dir, running_postgres
from test_ui_browser import run_sweep, write_spec

from experiments.jobs import read_job
from experiments.server import running_server

if TYPE_CHECKING:
    from conftest import LocalCluster

pytestmark = [pytest.mark.postgres, pytest.mark.slurm, pytest.mark.slow]

SWEEP = "pg_tiny"
SLURM = {
    "gpus_per_node": 1,
    "tasks_per_node": 1,
    "cpus_per_task": 1,
    "mem": "2G",
    "time": 20,
    "array_parallelism": 2,
    "max_requeues": 1,
}


def _job_ids(runs_root: Path) -> list[str]:
    """The SLURM job ids the sweep recorded in its run directories."""
    ids = []
    for path in runs_root.glob(f"{SWEEP}/*/job_id"):
        job = read_job(path.parent)
        if job is not None and job.kind == "slurm":
            ids.append(job.job_id)
    return ids


def _command_lines_with(secret: str) -> list[str]:
    """Command lines of this machine's processes that contain ``secret`` (readable by every user via ps)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if secret in text:
                found.append(text)
    return found


def test_slurm_sweep_logs_through_the_server_into_postgresql(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    bin_dir = require_bin_dir()
    runs_root = tmp_path / "runs"
    with running_postgres(bin_dir, keep_log=tmp_path / "postgres.log") as pg:
        with running_server(pg.uri, tmp_path / "artifacts", log=tmp_path / "server.log") as server:
            assert not _command_lines_with(pg.password), "the database password is on a command line (ps)"
            spec = write_spec(tmp_path, SWEEP, server, slurm={"partition": slurm_cluster.partition, **SLURM})
            try:
                output = run_sweep(spec, "--executor", "slurm", "--wait")
            finally:  # a failed or interrupted wait must not leave jobs logging to a server that is gone
                if ids := _job_ids(runs_root):
                    subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
        assert "submitted 2 runs (slurm)" in output
        jobs = _job_ids(runs_root)
        assert len(jobs) == 2
        assert {slurm_cluster.state(job) for job in jobs} == {"COMPLETED"}

        connection = pg.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    """
                    SELECT r.name, r.status, e.artifact_location,
                           (SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = 'slurm.array_job_id'),
                           ARRAY(SELECT step FROM metrics
                                 WHERE run_uuid = r.run_uuid AND key = 'val/mIoU' ORDER BY step),
                           ARRAY(SELECT value FROM metrics
                                 WHERE run_uuid = r.run_uuid AND key = 'val/mIoU' ORDER BY step)
                    FROM runs r
                    JOIN experiments e ON e.experiment_id = r.experiment_id
                    JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = 'mlflow.parentRunId'
                    WHERE e.name = %s
                    ORDER BY r.name
                    """,
                    (SWEEP,),
                )
                rows = cursor.fetchall()
        finally:
            connection.close()

    print("\n".join(map(str, rows)))
    assert [row[0] for row in rows] == ["backbone=resnet50,seed=0", "backbone=resnet50,seed=1"]
    for name, status, artifact_location, array_job, steps, values in rows:
        assert status == "FINISHED", name
        assert artifact_location.startswith("mlflow-artifacts:"), artifact_location  # served by the server
        assert array_job in {job.split("_")[0] for job in jobs}, (name, array_job)  # ran as a SLURM array task
        assert steps == [2, 4], (name, steps)  # eval_every 2, 4 iterations: both validations, no duplicates
        assert all(0.0 <= value <= 100.0 for value in values), (name, values)  # points
    assert pg.pid() is None and not pg.root.exists()  # stopped by PID file and deleted
