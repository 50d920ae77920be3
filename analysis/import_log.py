"""Import a training log in the seed's format into an MLflow run (loss and lr curves, the final mIoU).

Both versions of the seed's progress line are read, with or without the file handler's
``LEVEL file(line): `` prefix, amid interleaved noise (tqdm bars with carriage returns, warnings, tracebacks):
``it: 50/41000, lr: 0.000255, loss: 1.2345, eta: 13:01:02, time: 25.1234`` and
``iter: 100/41000, lr: 0.000011, loss: 0.8123, eta: 1 day, 2:03:04, time: 110.1234``; the final
``mIOU is: 0.8012…`` is logged as ``val/mIoU_seed_metric`` (which evaluator version produced it is unknown).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError
from deeplab.tracking import TRAIN_LOSS, TRAIN_LR, VAL_MIOU_SEED

PROGRESS = re.compile(
    r"\b(?:it|iter): (\d+)/(\d+), lr: ([-+0-9.eE]+), loss: ([-+0-9.eE]+|nan|-?inf), eta: [^,]*?(?:, [^,]*?)?, "
    r"time: ([0-9.]+)"
)
MIOU = re.compile(r"mIOU is: ([0-9]*\.[0-9]+)")


@dataclass
class SeedLog:
    points: list[tuple[int, float, float]] = field(default_factory=list)  # (iteration, lr, loss)
    total: int | None = None
    miou: float | None = None


def parse_seed_log(text: str) -> SeedLog:
    """Progress points and the final mIoU; lines that are not the seed's are ignored."""
    log = SeedLog()
    for line in re.split(r"[\r\n]+", text):
        if m := PROGRESS.search(line):
            log.points.append((int(m[1]), float(m[3]), float(m[4])))
            log.total = int(m[2])
        elif m := MIOU.search(line):
            log.miou = float(m[1])
    return log


def import_log(path: Path, tracking_uri: str, experiment: str, backbone: str, iterations: int | None = None) -> str:
    """Create one MLflow run from a seed log; a log with nothing to import creates nothing."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise AnalysisError(f"import-log: cannot read {path} ({err.strerror})") from None
    log = parse_seed_log(raw.decode("utf-8", errors="replace"))
    if not log.points and log.miou is None:
        raise AnalysisError(f"import-log: {path} has no line in the seed's format ('iter: N/M, lr: …, loss: …')")
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    total = iterations or log.total or (log.points[-1][0] if log.points else 0)
    digest = "seedlog-" + hashlib.sha256(raw).hexdigest()[:12]
    run = client.create_run(
        experiment_id,
        run_name=f"seed-log {path.name}",
        tags={
            "source": "seed-log",
            "config_hash": digest,
            "log_file": str(path.resolve()),
            "miou_metric": "seed evaluator (version unknown: see the seed's metric history)",
        },
    )
    now = int(time.time() * 1000)
    metrics = [Metric(TRAIN_LR, lr, now, it) for it, lr, _ in log.points]
    metrics += [Metric(TRAIN_LOSS, loss, now, it) for it, _, loss in log.points]
    if log.miou is not None:
        metrics.append(Metric(VAL_MIOU_SEED, log.miou, now, total))
    params = [Param("model.backbone", backbone), Param("train.iterations", str(total))]
    client.log_batch(run.info.run_id, params=params)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
