"""Import a training log in the seed's format as one MLflow run: loss/lr curves and every validation as a curve.

The run says which number a reader takes as "the result": the seed's train.py keeps the best validation
(``Get a new best …`` lines), so its result is the best of N validations selected on val, not a final model.
Importing the same log again (same content and options) returns the existing run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import AnalysisError
from analysis.seed_log import SEED_EPOCH_ITERATIONS, SeedLog, parse_seed_log
from deeplab.tracking import ITER_TIME, TRAIN_LOSS, TRAIN_LR, VAL_MIOU, VAL_MIOU_SEED, points
from experiments.store import RECORD_KEY, check_reachable, record_run

KEY_TAG = RECORD_KEY  # the run's key: a hash of the parsed facts and the options
EVALUATORS = {
    "official": (VAL_MIOU, "the official semantics (the seed's 2019 bincount evaluator over train-id predictions)"),
    "unknown": (VAL_MIOU_SEED, "seed evaluator (version unknown: see the seed's metric history)"),
}
RULE = (
    "a validation belongs to the iteration of the last progress line printed before it (at most one log interval "
    "early); with none before it, epoch × iterations per epoch"
)


@dataclass
class Imported:
    run_id: str
    created: bool  # False: the same log was imported before
    log: SeedLog
    iterations: int
    result: str  # what a reader takes as the result, in words


def _total(log: SeedLog, iterations: int | None, epoch_iterations: int, path: Path) -> tuple[int, str]:
    """The run's train.iterations and where it came from (never 0)."""
    last = max((v.iteration for v in log.validations), default=0)
    if iterations is not None:
        if iterations < max(last, log.progress[-1].iteration if log.progress else 0):
            raise AnalysisError(f"import-log: --iterations {iterations} is below the log's last iteration in {path}")
        return iterations, "--iterations"
    if log.total:
        return log.total, "progress lines (N/M)"
    epochs = [v.epoch for v in log.validations if v.epoch is not None]
    if epochs:
        return max(epochs) * epoch_iterations, f"last epoch {max(epochs)} × {epoch_iterations} iterations per epoch"
    raise AnalysisError(f"import-log: {path} has no progress line to read the iteration count from; pass --iterations")


def _result(log: SeedLog, key: str) -> tuple[dict[str, str], list[tuple[str, float, int]]]:
    """What a reader takes as the result (tags) and the best validation as a point."""
    vals = log.validations
    if vals and any(v.new_best for v in vals):
        best = max(vals, key=lambda v: v.miou)
        tags = {"result.reported": "best", "result.selection": f"best-of-{len(vals)}-on-val"}
        tags |= {"result.selected_on": "val", "result.miou": f"{points(best.miou):.2f}"}
        tags["result.iteration"] = str(best.iteration)
        return tags, [(f"{key}_best", points(best.miou), best.iteration)]
    if log.final_eval is not None:
        return {"result.reported": "final evaluation", "result.selection": "final"}, []
    if not vals:
        return {"result.reported": "none (no validation in the log)", "result.selection": "unknown"}, []
    return {"result.reported": "last", "result.selection": "final", "result.miou": f"{points(vals[-1].miou):.2f}"}, []


def import_log(
    path: Path,
    tracking_uri: str,
    experiment: str,
    backbone: str,
    iterations: int | None = None,
    *,
    percent: bool = False,
    epoch_iterations: int = SEED_EPOCH_ITERATIONS,
    evaluator: str = "unknown",
) -> Imported:
    """Import one seed log as an MLflow run (or find the run of an earlier import of it)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise AnalysisError(f"import-log: cannot read {path} ({err.strerror})") from None
    log = parse_seed_log(
        raw.decode("utf-8", errors="replace"), percent=percent, epoch_iterations=epoch_iterations, where=str(path)
    )
    if not log.progress and not log.validations and log.final_eval is None:
        raise AnalysisError(f"import-log: {path} has no line in the seed's format ('iter: N/M, lr: …, loss: …')")
    total, total_from = _total(log, iterations, epoch_iterations, path)
    val_key, evaluator_words = EVALUATORS[evaluator]
    metrics = [(TRAIN_LR, p.lr, p.iteration) for p in log.progress]
    metrics += [(TRAIN_LOSS, p.loss, p.iteration) for p in log.progress]
    metrics += [
        (ITER_TIME, b.seconds / (b.iteration - a.iteration), b.iteration)
        for a, b in zip(log.progress, log.progress[1:], strict=False)
        if b.iteration > a.iteration
    ]
    metrics += [(val_key, points(v.miou), v.iteration) for v in log.validations]  # the store keeps points
    if log.final_eval is not None:
        metrics.append((val_key.replace("val/", "eval/", 1), points(log.final_eval), total))
    result_tags, best = _result(log, val_key)
    facts = {
        "progress": [vars(p) for p in log.progress],
        "validations": [(v.iteration, v.miou) for v in log.validations],
    }
    facts |= {"final": log.final_eval, "total": total, "backbone": backbone, "evaluator": evaluator, "unit": "points"}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    tags = {
        "source": "seed-log",
        "config_hash": f"seedlog-{key[:12]}",
        "log_file": path.name,
        "log_sha256": hashlib.sha256(raw).hexdigest(),
        "miou_metric": evaluator_words,
        "validation_rule": RULE,
        "log_truncated": str(log.truncated).lower(),
        **result_tags,
    }
    params = {"model.backbone": backbone, "train.iterations": str(total), "import.iterations_from": total_from}
    params |= {"import.validations": str(len(log.validations)), "import.epoch_iterations": str(epoch_iterations)}
    check_reachable(tracking_uri)  # fails in seconds, naming the URI
    run_id, created = record_run(
        tracking_uri,
        experiment,
        key=key,
        run_name=f"seed-log {path.name}",
        tags=tags,
        params=params,
        metrics=metrics + best,
        status="FINISHED",
    )
    return Imported(run_id, created, log, total, _describe(log, result_tags))


def _describe(log: SeedLog, tags: dict[str, str]) -> str:
    n = len(log.validations)
    if tags["result.reported"] == "best":
        return f"{n} validations; result = the best, {tags['result.miou']} mIoU after iteration " + (
            f"{tags['result.iteration']}, selected on val"
        )
    if tags["result.reported"] == "final evaluation":
        return f"{n} validations; result = the final model's evaluation, {points(log.final_eval):.2f} mIoU"
    if not n:
        return "no validation (loss and lr curves only)"
    return f"{n} validations; result = the last, {points(log.validations[-1].miou):.2f} mIoU"
