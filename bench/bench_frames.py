"""How fast the analysis loads a big sweep: 200 runs × 100 validation points into runs and curves frames.

The store is a fresh sqlite file filled through MLflow's own ``log_batch`` with what the engine logs: the
flattened config and ``info.*`` as params, ``val/mIoU``, ``val/mIoU_void_as_fp`` and a few ``val/IoU/<class>``
per validation. Goal: ``runs_frame`` + ``curves_frame`` under 3 s.

The analysis reads through ``experiments.store``: run records by MLflow's ``search_runs``, metric histories by
one read-only query on a database store whose schema revision is the checked one, else ``get_metric_history``
per run and metric. Both history paths are timed here, ABBA (query, API, API, query).

    .venv/bin/python bench/bench_frames.py [--runs 200] [--points 100]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.frames import curves_frame, runs_frame
from deeplab.config import config_hash, flatten, load_config, to_dict
from deeplab.tracking import VAL_MIOU, VAL_MIOU_SEED, iou_metric_name
from experiments.axes import SHORT_NAMES, run_name
from experiments.store import find_experiment, read, run_records

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("road", "car", "person", "traffic light", "train")
GOAL_S = 3.0
AXES = list(SHORT_NAMES)  # the grid: backbone × schedule × seed
CHECKED = read.CHECKED_REVISIONS


def fill_store(uri: str, experiment: str, n_runs: int, n_points: int) -> None:
    """A sweep's worth of finished child runs under one parent, as the sweep and the engine would log them."""
    client = MlflowClient(uri)
    eid = client.create_experiment(experiment)
    parent = client.create_run(eid, run_name=experiment, tags={"sweep.name": experiment, "sweep.role": "parent"})
    rng = np.random.default_rng(0)
    keys = [VAL_MIOU, VAL_MIOU_SEED, *(iou_metric_name(c) for c in CLASSES)]
    for i in range(n_runs):
        backbone, seed, iterations = ("resnet50", "resnet101")[i % 2], i // 2 % 5, 1000 * (1 + i // 10)
        cfg = load_config(
            REPO / "configs" / "synthetic_tiny.yaml",
            {"model.backbone": backbone, "train.seed": seed, "train.iterations": iterations},
        )
        digest = config_hash(cfg)
        run = client.create_run(
            eid,
            run_name=run_name(cfg, AXES),
            tags={"mlflow.parentRunId": parent.info.run_id, "config_hash": digest, "sweep.name": experiment},
        )
        info = {"info.params": 40_000_000, "info.gflops": 40.0, "info.config_hash": digest, "info.world_size": 2}
        params = [Param(k, str(v)) for k, v in {**flatten(to_dict(cfg)), **info, "info.device": "cuda"}.items()]
        for j in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[j : j + 100])
        steps = np.linspace(iterations / n_points, iterations, n_points).astype(int)
        start = int(time.time() * 1000)
        curve = 0.8 * (1 - np.exp(-steps / (iterations / 4))) + rng.normal(0, 0.005, n_points)
        metrics = [
            Metric(key, float(np.clip(curve[k] * (0.7 + 0.05 * c), 0, 1)), start + 1000 * k, int(step))
            for c, key in enumerate(keys)
            for k, step in enumerate(steps)
        ]
        for j in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[j : j + 1000])
        client.set_terminated(run.info.run_id, "FINISHED")


def use_query(on: bool) -> None:
    """Let the store read histories with its read-only query (on) or through MLflow's API only (off)."""
    read.CHECKED_REVISIONS = CHECKED if on else ()
    read._sql_engine.cache_clear()


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=100, help="validation points per run")
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    shm = Path("/dev/shm")  # memory-backed when there: filling the store is then CPU-bound, not fsync-bound
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        uri, experiment = f"sqlite:///{Path(tmp) / 'mlflow.db'}", "bench_frames"
        _, fill_s = timed(fill_store, uri, experiment, args.runs, args.points)
        n_points = args.runs * args.points * (2 + len(CLASSES))
        print(f"store: {args.runs} runs, {n_points} metric points via log_batch in {fill_s:.1f} s")
        runs_frame(uri, experiment)  # warm-up: imports, SQLAlchemy engine, MLflow's schema check
        seconds: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for sql in (True, False, False, True):  # ABBA: the read-only query, then MLflow's API alone
            use_query(sql)
            runs, runs_s = timed(runs_frame, uri, experiment)
            curves, curves_s = timed(curves_frame, uri, list(runs.run_id))
            assert len(runs) == args.runs and len(curves) == args.runs * args.points * 2, (len(runs), len(curves))
            seconds[sql].append((runs_s, curves_s))
        use_query(True)
        _, records_s = timed(run_records, uri, find_experiment(uri, experiment))
    mean = {k: [sum(t[i] for t in v) / len(v) for i in (0, 1)] for k, v in seconds.items()}
    (runs_s, curves_s), (api_runs_s, api_curves_s) = mean[True], mean[False]
    total, api_total = runs_s + curves_s, api_runs_s + api_curves_s
    print(f"runs_frame    {runs_s:6.2f} s  ({len(runs)} rows; search_runs alone, once: {records_s:.2f} s)")
    print(f"curves_frame  {curves_s:6.2f} s  ({len(curves)} rows of val/mIoU + val/mIoU_seed_metric)")
    print(f"total         {total:6.2f} s  (goal < {GOAL_S:g} s): {'ok' if total < GOAL_S else 'SLOW'}")
    print(
        f"through MLflow's API alone (get_metric_history per run and metric): runs_frame {api_runs_s:.2f} s, "
        f"curves_frame {api_curves_s:.2f} s, total {api_total:.2f} s ({api_total / total:.1f}x; means of ABBA)"
    )
    return 0 if total < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
