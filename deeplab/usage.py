"""What a run has cost so far, summed over its attempts: kept in the run directory, so a resumed run continues it.

MLflow's Duration counts from the run's creation, which a sweep does at submission: queueing is in it. This clock
counts only the time an attempt holds its devices, from the engine's start to its end, and the file is rewritten
at every log window, so an attempt killed without a word (kill -9, node failure) loses one window at most; the
iterations it replays after resuming are counted again, as they were paid for again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from deeplab.errors import DeeplabError
from deeplab.lease import check_run_dir
from deeplab.tracking import COST_ATTEMPTS, COST_DEVICE_HOURS, COST_WALL_HOURS

USAGE_NAME = "usage.json"


class Usage:
    """The running sums of one run (rank 0): wall seconds, device-seconds (wall × ranks) and attempts.

    ``started`` is this attempt's start (``time.monotonic()``); the sums of the earlier attempts are read from
    ``run_dir/usage.json``, and this attempt counts as one more from the first save on."""

    def __init__(self, run_dir: Path, devices: int, started: float) -> None:
        self.path = Path(run_dir) / USAGE_NAME
        self.devices, self.started = devices, started
        before = self._read()
        self.wall_s, self.device_s = float(before.get("wall_s", 0.0)), float(before.get("device_s", 0.0))
        self.attempts = int(before.get("attempts", 0)) + 1

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            data = None
        if not isinstance(data, dict):  # writes go through a temp file: this one is not ours; bookkeeping only
            print(f"warning: {self.path} is not usage written by this project; counting afresh", file=sys.stderr)
            return {}
        return data

    def totals(self) -> dict[str, float]:
        """The sums including this attempt up to now."""
        now = time.monotonic() - self.started
        return {
            "wall_s": self.wall_s + now,
            "device_s": self.device_s + now * self.devices,
            "attempts": self.attempts,
        }

    def save(self) -> dict[str, float]:
        """Write the sums (temp file + rename) and return them as the run's cost metrics."""
        totals = self.totals()
        try:
            check_run_dir(self.path.parent)
        except DeeplabError:  # moved or replaced while we trained: nothing goes into what sits there now
            return metrics(totals)
        tmp = self.path.with_name(f".{USAGE_NAME}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(totals))
        tmp.replace(self.path)
        return metrics(totals)


def metrics(totals: dict[str, float]) -> dict[str, float]:
    """Usage sums as the tracker's cost metrics."""
    return {
        COST_WALL_HOURS: totals["wall_s"] / 3600,
        COST_DEVICE_HOURS: totals["device_s"] / 3600,
        COST_ATTEMPTS: float(totals["attempts"]),
    }


def recorded(run_dir: Path) -> dict[str, float] | None:
    """The cost metrics a run directory holds (a finished run's), else None."""
    try:
        totals = json.loads((Path(run_dir) / USAGE_NAME).read_text())
        return metrics(totals)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
