"""Progress: a tqdm bar on a terminal, one grep-able line per ``log_every`` iterations otherwise (SLURM logs)."""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from tqdm import tqdm


def _silence(stream: TextIO) -> None:
    """Point a closed pipe's descriptor at /dev/null: later writes (the last lines, the tracker's) succeed."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stream.fileno())
    finally:
        os.close(null)


class Progress:
    """Rank 0 shows progress; other ranks stay quiet. When the reader of its output goes away (``| head`` ended,
    the terminal closed) the output goes to /dev/null and ``on_closed`` asks the run to checkpoint and stop."""

    def __init__(
        self, mode: str, total: int, start: int, enabled: bool, on_closed: Callable[[], None] | None = None
    ) -> None:
        self.on_closed = on_closed
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.enabled = enabled and mode != "off"
        self.total, self.start = total, start
        self.t0 = time.perf_counter()
        use_bar = self.enabled and use_bar
        self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True) if use_bar else None

    def step(self, iteration: int, lr: float, loss: float | None) -> None:
        """Called every iteration; ``loss`` is given on logging iterations only."""
        if not self.enabled:
            return
        if self.bar is not None:
            with self._guard(sys.stderr):
                self.bar.update(1)
                if loss is not None:
                    self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.6f}")
            return
        if loss is None:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (iteration - self.start) / elapsed if elapsed > 0 else 0.0
        eta = datetime.timedelta(seconds=round((self.total - iteration) / rate)) if rate > 0 else "?"
        with self._guard(sys.stdout):
            print(f"iter {iteration}/{self.total} lr {lr:.6f} loss {loss:.4f} eta {eta} it/s {rate:.2f}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            with self._guard(sys.stderr):
                self.bar.write(text)
        else:
            with self._guard(sys.stdout):
                print(text, flush=True)

    @contextlib.contextmanager
    def _guard(self, stream: TextIO) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            _silence(stream)
            if self.on_closed is not None:
                self.on_closed()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class CountProgress:
    """Items done out of a total: a tqdm bar on a terminal, else a line every ``every_s`` seconds and at the end."""

    def __init__(self, desc: str, total: int, mode: str = "auto", every_s: float = 10.0) -> None:
        self.desc, self.total, self.every_s, self.done = desc, total, every_s, 0
        self.t0 = self.last = time.perf_counter()
        self.quiet, self.printed = mode == "off", False
        use_bar = not self.quiet and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True) if use_bar else None

    def advance(self, note: str = "") -> None:
        """One more item done; ``note`` (e.g. "2 bad") goes on the bar or the next line."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if note:
                self.bar.set_postfix_str(note)
            return
        now = time.perf_counter()
        if not self.quiet and (now - self.last >= self.every_s or (self.printed and self.done == self.total)):
            self.last, self.printed = now, True
            rate = self.done / (now - self.t0) if now > self.t0 else 0.0
            eta = datetime.timedelta(seconds=round((self.total - self.done) / rate)) if rate > 0 else "?"
            extra = f", {note}" if note else ""
            print(
                f"{self.desc}: {self.done}/{self.total} ({100 * self.done / max(1, self.total):.0f}%){extra}, "
                f"eta {eta}",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
