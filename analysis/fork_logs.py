"""The seed fork's two training logs as package data: every validation, the loss curve, the source.

``python -m analysis fork-data LOG_DIR`` regenerates ``analysis/data/seed_fork_*`` from the logs with the
importer's parser (``analysis.seed_log``); the raw logs are not part of the project.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from analysis.errors import AnalysisError
from analysis.seed_log import SEED_EPOCH_ITERATIONS, parse_seed_log

DATA = Path(__file__).with_name("data")
SOURCE = "https://github.com/konami86/DeepLab-v3-plus-cityscapes-Res50"
COMMIT_DATE = "2019-08-08"
FORK_LOGS = {
    "slurm-11413.out": "the fork README's record of its 60 000-iteration res50 run (validations from epoch 21)",
    "slurm-11311.out": "an earlier 41 000-iteration res50 run (validations from epoch 1); backbone per the fork code",
}
META, VALIDATIONS, PROGRESS = "seed_fork_logs.json", "seed_fork_validations.csv", "seed_fork_progress.csv"


def extract_fork_logs(log_dir: Path, out: Path = DATA) -> list[Path]:
    """Parse both fork logs in ``log_dir`` and write the three package-data files to ``out`` (all or nothing)."""
    meta, validations, progress = [], [], []
    for name, note in FORK_LOGS.items():
        path = Path(log_dir) / name
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise AnalysisError(f"fork-data: cannot read {path} ({err.strerror})") from None
        log = parse_seed_log(raw.decode("utf-8", errors="replace"), where=str(path))
        if not log.validations or not log.total:
            raise AnalysisError(f"fork-data: {path} has no validation or no progress line: not a fork log")
        meta.append(
            {
                "file": name,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "backbone": "resnet50",
                "max_iter": log.total,
                "validations": len(log.validations),
                "log_interval": log.log_interval,
                "epoch_iterations": SEED_EPOCH_ITERATIONS,
                "selection": f"best-of-{len(log.validations)}-on-val",
                "note": note,
            }
        )
        validations += [
            (name, v.iteration, v.epoch, v.miou, v.new_best, v.printed_previous_best) for v in log.validations
        ]
        progress += [(name, p.iteration, p.lr, p.loss, p.seconds) for p in log.progress]
    header = {"source": SOURCE, "commit_date": COMMIT_DATE, "extracted_by": "python -m analysis fork-data LOG_DIR"}
    header["rule"] = "a validation belongs to the iteration of the last progress line printed before it"
    texts = {
        META: json.dumps({**header, "logs": meta}, indent=2, sort_keys=True) + "\n",
        VALIDATIONS: pd.DataFrame(
            validations, columns=["log", "iteration", "epoch", "miou", "new_best", "printed_previous_best"]
        )
        .astype({"epoch": "Int64"})
        .to_csv(index=False),
        PROGRESS: pd.DataFrame(progress, columns=["log", "iteration", "lr", "loss", "seconds"]).to_csv(index=False),
    }
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (out / f".{name}.tmp").write_text(text)
        for name in texts:
            os.replace(out / f".{name}.tmp", out / name)
    except OSError as err:
        raise AnalysisError(f"fork-data: cannot write {err.filename or out} ({err.strerror})") from None
    return [out / name for name in texts]


def fork_meta(data: Path = DATA) -> dict:
    """Source URL, commit date and per-log facts (file, sha256, max_iter, validations, …)."""
    return json.loads((Path(data) / META).read_text())


def fork_validations(data: Path = DATA) -> pd.DataFrame:
    """(log, iteration, epoch, miou as a fraction, new_best, printed_previous_best), in log order."""
    return pd.read_csv(Path(data) / VALIDATIONS, dtype={"epoch": "Int64"})


def fork_progress(data: Path = DATA) -> pd.DataFrame:
    """(log, iteration, lr, loss, seconds since the previous line): the loss curves."""
    return pd.read_csv(Path(data) / PROGRESS)


def fork_summary(validations: pd.DataFrame | None = None, k: int = 10) -> pd.DataFrame:
    """Per log, in points: validations, first iteration, final (last), best and where, mean and sd of the last k."""
    validations = fork_validations() if validations is None else validations
    rows = []
    for name, group in validations.groupby("log", sort=False):
        points = 100 * group.miou.to_numpy()
        best = int(points.argmax())
        rows.append(
            {
                "log": name,
                "validations": len(group),
                "first_iteration": int(group.iteration.iloc[0]),
                "final_iteration": int(group.iteration.iloc[-1]),
                "final": float(points[-1]),
                "best": float(points[best]),
                "best_iteration": int(group.iteration.iloc[best]),
                f"mean_last_{k}": float(points[-k:].mean()),
                f"sd_last_{k}": float(points[-k:].std(ddof=1)),
            }
        )
    return pd.DataFrame(rows)
