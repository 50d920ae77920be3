"""Cost of MLflow tracking inside the engine's training loop: train-step time with the MLflow tracker (sqlite
store, and over HTTP against `mlflow server`) vs no tracker. Goal: < 1 % overhead.

The engine trains the synthetic tiny config (32×64 crops, batch 2, ResNet-50, CPU: a short step, so the share is
an upper bound) with ``log_every=1`` (the worst case: three points every iteration; real configs log every 10+)
and a checkpoint — hence a tracker flush — every 10 iterations. Arms alternate, rotating their order each round,
so load from other processes hits all alike. Two measures per arm:

- A/B: mean wall time per iteration inside the loop (iterations 2..N, flushes and checkpoints included), median
  over rounds, compared with the no-tracker arm. On a shared machine its noise can exceed the effect.
- direct: seconds spent inside the tracker's methods during the loop (a timing proxy around the real tracker)
  divided by the loop's wall time: the overhead itself, with no run-to-run noise.

    python bench/bench_tracking.py [--quick] [--no-server] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from deeplab.config import Config, load_config
from deeplab.data.synth import synthesize
from deeplab.engine import train
from experiments.mlflow_tracker import MlflowTracker
from experiments.server import running_server
from experiments.store import ensure_child_run, ensure_experiment, ensure_parent_run

REPO = Path(__file__).resolve().parents[1]
GOAL_PCT = 1.0


class TimedTracker:
    """The real tracker, with the seconds spent in each of its methods added up."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            tick = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - tick

        return timed


def bench_config(data: Path, iterations: int) -> Config:
    overrides = {
        "data.root": str(data),
        "data.synthetic": None,
        "data.crop_size": [32, 64],
        "data.batch_size_per_gpu": 2,
        "train.iterations": iterations,
        "train.eval_every": 0,
        "train.checkpoint_every": 10,
        "train.log_every": 1,
        "schedule.warmup_iters": 2,
    }
    return load_config(REPO / "configs" / "synthetic_tiny.yaml", overrides)


def new_run(uri: str) -> str:
    experiment = ensure_experiment(uri, "bench_tracking")
    parent = ensure_parent_run(uri, experiment, "bench_tracking", {}, {})
    return ensure_child_run(uri, experiment, parent, uuid.uuid4().hex[:12], "bench", {}, {}).run_id


def one_run(cfg: Config, run_dir: Path, uri: str | None) -> tuple[float, float]:
    """(mean seconds per iteration over iterations 2..N, share of that spent inside the tracker)."""
    tracker = TimedTracker(MlflowTracker(uri, new_run(uri), spool_dir=run_dir)) if uri else None
    marks: list[tuple[float, float]] = []

    def on_iteration(_iteration: int) -> None:
        marks.append((time.perf_counter(), tracker.total if tracker else 0.0))

    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg, run_dir, tracker, progress="lines", on_iteration=on_iteration)
    assert result.status == "finished"
    if tracker is not None:
        tracker.close("FINISHED")
    shutil.rmtree(run_dir)
    (t0, k0), (t1, k1) = marks[0], marks[-1]
    return (t1 - t0) / (len(marks) - 1), (k1 - k0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 iterations, 2 rounds")
    parser.add_argument("--no-server", action="store_true", help="skip the `mlflow server` arm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 on a shared 2-core box is erratic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    iterations, rounds = (12, 2) if args.quick else (20, 3)
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp_name:
        tmp = Path(tmp_name)
        cfg = bench_config(synthesize(tmp / "data", train=8, val=2, height=64, width=128, seed=0), iterations)
        sqlite = f"sqlite:///{tmp / 'mlflow.db'}"
        ensure_experiment(sqlite, "bench_tracking")  # the store exists before timing starts
        with contextlib.ExitStack() as stack:
            arms: dict[str, str | None] = {"none": None, "sqlite": sqlite}
            if not args.no_server:
                started = time.perf_counter()
                arms["http"] = stack.enter_context(running_server(sqlite, tmp / "artifacts"))
                print(f"mlflow server up in {time.perf_counter() - started:.1f} s", flush=True)
            print(
                f"{iterations} iterations × {rounds} rounds per arm, ResNet-50 32×64 batch 2, "
                f"{torch.get_num_threads()} threads, log_every 1, flush+checkpoint every 10",
                flush=True,
            )
            step: dict[str, list[float]] = defaultdict(list)
            share: dict[str, list[float]] = defaultdict(list)
            names = list(arms)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    seconds, in_tracker = one_run(cfg, tmp / f"run-{name}-{r}", arms[name])
                    step[name].append(seconds)
                    share[name].append(in_tracker)
                    print(f"  round {r + 1} {name:<6} {seconds * 1000:8.1f} ms/iter", flush=True)
        base = statistics.median(step["none"])
        print(f"\n{'arm':<8} {'ms/iter':>9} {'A/B overhead':>13} {'direct overhead':>16}")
        print(f"{'none':<8} {base * 1000:9.1f} {'-':>13} {'-':>16}")
        for name in names[1:]:
            median = statistics.median(step[name])
            direct = 100 * statistics.median(share[name])
            print(f"{name:<8} {median * 1000:9.1f} {100 * (median / base - 1):+12.2f}% {direct:15.3f}%")
        spread = 100 * (max(step["none"]) / min(step["none"]) - 1)
        worst = max(100 * statistics.median(share[n]) for n in names[1:])
        print(f"run-to-run spread of the no-tracker arm: {spread:.1f}% (the A/B figure's noise floor)")
        verdict = "met" if worst < GOAL_PCT else "NOT met"
        print(f"goal: < {GOAL_PCT:.0f}% overhead; direct worst case {worst:.3f}% → {verdict}")


if __name__ == "__main__":
    main()
