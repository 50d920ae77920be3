"""Read a training log in the seed's format: progress points, every validation at its iteration, the best lines.

Lines are found anywhere in the noise around them (tqdm bars joined by carriage returns, multi-line warnings,
the file handler's ``LEVEL file(line): `` prefix, CRLF line ends). Both progress-line versions are read:
``it: 50/41000, lr: 0.000255, loss: 1.2345, eta: 13:01:02, time: 25.1234`` (older) and
``iter: 100/60000, lr: 0.000011, loss: 3.0422, eta: 1 day, 2:03:04, time: 88.1940`` (newer).

Where a validation (``mIOU is: <fraction>``) happened: train.py validates at the end of an epoch, after the
last progress line it printed, so a validation belongs to the iteration of the last progress line before it
(the true iteration is at most one log interval later). A validation before any progress line is placed by its
epoch: ``Get a new best mIMOU:<previous best> at epoch:N`` follows a validation that beat every earlier one
(it prints the OLD best), and validations run once per epoch, so the epochs of the others are counted from it;
iteration = epoch × iterations per epoch. A ``mIOU is:`` after ``evaluating the final model`` is the final
model's evaluation, not an in-training validation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from analysis.errors import AnalysisError

SEED_EPOCH_ITERATIONS = 372  # the fork's epoch: ceil(2975 train images / batch 8), as its "epoch:N" lines show

_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
PROGRESS = re.compile(
    rf"\b(?:it|iter): (\d+)/(\d+), lr: ({_FLOAT}), loss: ({_FLOAT}), eta: (?:\d+ days?, )?[\d:]+, time: ({_FLOAT})",
    re.IGNORECASE,
)
MIOU = re.compile(rf"mIOU is: ?({_FLOAT})", re.IGNORECASE)
NEW_BEST = re.compile(rf"Get a new best mIMOU: ?({_FLOAT}) at epoch: ?(\d+)")
FINAL_EVAL = re.compile(r"evaluating the final model")


@dataclass
class Progress:
    iteration: int
    lr: float
    loss: float
    seconds: float  # since the previous progress line


@dataclass
class Validation:
    miou: float  # a fraction in [0, 1]
    line: int  # 1-based line number in the log
    iteration: int | None = None  # per the module's rule
    epoch: int | None = None  # from a "Get a new best … at epoch:N" line, or counted from one
    new_best: bool = False
    printed_previous_best: float | None = None  # what the "Get a new best" line printed (the OLD best)
    placed_by: str = "progress"  # "progress" or "epoch"


@dataclass
class SeedLog:
    progress: list[Progress] = field(default_factory=list)
    validations: list[Validation] = field(default_factory=list)  # in-training, in order
    final_eval: float | None = None  # the final model's evaluation after training, when the log has one
    total: int | None = None  # M of the progress lines' "N/M"
    truncated: bool = False  # the last line had no newline (cut while written): a validation on it is dropped
    final_missing: bool = False  # "evaluating the final model" with no mIoU after it: cut before the result

    @property
    def log_interval(self) -> int | None:
        steps = [b.iteration - a.iteration for a, b in zip(self.progress, self.progress[1:], strict=False)]
        return min(steps) if steps else None


def _fraction(text: str, line: int, percent: bool, where: str) -> float:
    value = float(text)
    if percent:
        value /= 100
    if not 0 <= value <= 1:  # NaN fails this too
        shown = f"{text} (read as percent: {value:g})" if percent else text
        hint = "" if percent else "; pass --percent if the log prints mIoU in percent"
        raise AnalysisError(f"{where} line {line}: mIoU {shown} is outside [0, 1]{hint}")
    return value


def _scan(text: str, percent: bool, where: str) -> SeedLog:
    log = SeedLog(truncated=bool(text) and not text.endswith(("\n", "\r")))
    lines = text.replace("\r\n", "\n").split("\n")
    pending_final = False
    last_iteration: int | None = None
    for number, line in enumerate(lines, start=1):
        cut = log.truncated and number == len(lines)
        for segment in line.split("\r"):  # tqdm redraws its bar after carriage returns
            if m := PROGRESS.search(segment):
                last_iteration, log.total = int(m[1]), int(m[2])
                log.progress.append(Progress(last_iteration, float(m[3]), float(m[4]), float(m[5])))
            elif m := MIOU.search(segment):
                if cut:
                    continue  # the number may have been cut while being written
                value = _fraction(m[1], number, percent, where)
                if pending_final:
                    log.final_eval, pending_final = value, False
                else:
                    log.validations.append(Validation(value, number, last_iteration))
            elif m := NEW_BEST.search(segment):
                if not log.validations or log.validations[-1].new_best:
                    continue  # an excerpt that starts after its validation: nothing to attach it to
                v = log.validations[-1]
                v.new_best, v.epoch = True, int(m[2])
                v.printed_previous_best = _fraction(m[1], number, percent, where)
            elif FINAL_EVAL.search(segment):
                pending_final = True
    log.final_missing = pending_final
    return log


def _place_by_epoch(log: SeedLog, epoch_iterations: int, where: str) -> None:
    """Epochs of the validations counted from the first one with an "epoch:N" line (one validation per epoch)."""
    anchors = [(k, v.epoch) for k, v in enumerate(log.validations) if v.epoch is not None]
    for k, v in enumerate(log.validations):
        if anchors:
            counted = anchors[0][1] + k - anchors[0][0]
            if v.epoch is not None and v.epoch != counted:
                raise AnalysisError(
                    f"{where} line {v.line}: 'epoch:{v.epoch}' but counting one validation per epoch gives {counted}"
                )
            v.epoch = counted
        if v.iteration is None:
            if v.epoch is None:
                raise AnalysisError(
                    f"{where} line {v.line}: a validation with no progress line before it and no "
                    "'Get a new best … at epoch:N' line to count epochs from: its iteration is unknown"
                )
            if v.epoch < 1:
                raise AnalysisError(f"{where} line {v.line}: counted epoch {v.epoch} < 1: validations are missing")
            v.iteration, v.placed_by = v.epoch * epoch_iterations, "epoch"


def parse_seed_log(
    text: str, *, percent: bool = False, epoch_iterations: int = SEED_EPOCH_ITERATIONS, where: str = "log"
) -> SeedLog:
    """Progress points, in-training validations (each at its iteration) and the final evaluation of a seed log.

    ``percent`` reads mIoU values as percent; otherwise a value outside [0, 1] is an error naming ``where`` and
    the line. Lines that are not the seed's are ignored.
    """
    log = _scan(text, percent, where)
    if any(v.iteration is None for v in log.validations):
        _place_by_epoch(log, epoch_iterations, where)
    for p in log.progress:
        if math.isnan(p.seconds) or p.seconds < 0:
            raise AnalysisError(f"{where}: progress line 'iter: {p.iteration}' has time {p.seconds}")
    return log
