"""The seed fork's two training logs as package data: every validation, the loss curve, the source.

``python -m analysis fork-data LOG_DIR`` regenerates ``analysis/data/seed_fork_*`` from the logs with the
importer's parser (``analysis.seed_log``); the raw logs are not part of the project. A log that does not run to
its end (missing, cut mid-line, stopped before its last iteration or its last validation) is refused: the package
data stays as it was, since it would otherwise describe part of a run as the whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from analysis.errors import AnalysisError
from analysis.seed_log import SEED_EPOCH_ITERATIONS, SeedLog, parse_seed_log

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
        _check_complete(log, path)
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
    return _replace_all(Path(out), texts)


def _check_complete(log: SeedLog, path: Path) -> None:
    """Refuse a log that stops before its run's end. Validations come once an epoch, so a whole log's last one is
    within an epoch (plus a log interval, where it is placed) of its last iteration."""
    if not log.validations or not log.total:
        raise AnalysisError(f"fork-data: {path} has no validation or no progress line: not a fork log")
    end = f"{path} is incomplete, refused (the package data is left as it was)"
    if log.truncated or log.final_missing:
        cut = "mid-line" if log.truncated else "before its final evaluation's result"
        raise AnalysisError(f"fork-data: {end}: it ends {cut}, cut while it was written")
    interval, last = log.log_interval or 0, log.progress[-1].iteration
    if last < log.total - interval:
        raise AnalysisError(f"fork-data: {end}: its progress stops at iteration {last} of {log.total}")
    final = log.validations[-1].iteration
    if final < log.total - SEED_EPOCH_ITERATIONS - interval:
        raise AnalysisError(
            f"fork-data: {end}: its last validation is at iteration {final}, more than an epoch "
            f"({SEED_EPOCH_ITERATIONS} iterations) before the end ({log.total}): cut before its final validation"
        )


def _replace_all(out: Path, texts: dict[str, str]) -> list[Path]:
    """Every file written beside its target first, then each renamed over it: a failure (a full disk) leaves the
    old files and no temporary behind."""
    temps = [out / f".{name}.tmp" for name in texts]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for temp, text in zip(temps, texts.values(), strict=True):
            temp.write_text(text)
        for temp, name in zip(temps, texts, strict=True):
            os.replace(temp, out / name)
    except OSError as err:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
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
