"""Progress: a tqdm bar on a terminal, one grep-able line per ``log_every`` iterations otherwise (SLURM logs)."""

from __future__ import annotations

import datetime
import sys
import time

from tqdm import tqdm


class Progress:
    """Rank 0 shows progress; other ranks stay quiet."""

    def __init__(self, mode: str, total: int, start: int, enabled: bool) -> None:
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.enabled = enabled
        self.total, self.start = total, start
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True) if enabled and use_bar else None

    def step(self, iteration: int, lr: float, loss: float | None) -> None:
        """Called every iteration; ``loss`` is given on logging iterations only."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.6f}")
            return
        if loss is None:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (iteration - self.start) / elapsed if elapsed > 0 else 0.0
        eta = datetime.timedelta(seconds=round((self.total - iteration) / rate)) if rate > 0 else "?"
        print(
            f"iter {iteration}/{self.total} lr {lr:.6f} loss {loss:.4f} eta {eta} it/s {rate:.2f}",
            flush=True,
        )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
