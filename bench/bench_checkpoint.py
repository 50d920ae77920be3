"""What a stop costs: the resumable checkpoint of the real model, written the way a stopping job writes it.

Builds each seed preset's model (weights none) with SGD momentum buffers (the optimizer state a resumable
checkpoint holds), writes ``checkpoint.pt`` with the engine's ``save_checkpoint`` (temp file, fsync, rename) into
``--dir`` (put it on the file system that holds your runs), and prints size, seconds and MB/s. Then the signal
lead time this implies: the current iteration, a validation already under way (the engine does not interrupt
one), and the checkpoint at a slow shared file system's rate, against the 300 s the sbatch script, the profiles
and the submitit executor ask for.

    python bench/bench_checkpoint.py [--dir DIR] [--repeats 3] [--slow-fs-mb-s 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplab.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from deeplab.config import load_config, to_dict  # noqa: E402
from deeplab.model import build_model  # noqa: E402
from deeplab.schedule import build_optimizer  # noqa: E402
from experiments.spec import SlurmSpec  # noqa: E402

ITERATION_S = 0.82 * 2  # the fork's V100 s/iteration (seed recipe, 2 GPUs), doubled for a slower GPU
VALIDATION_S = 500 / 2 * 0.4  # 500 val frames over 2 GPUs, ~0.4 s per full frame single-scale (R101, V100)


def resumable_state(preset: Path) -> dict:
    cfg = load_config(preset, ["model.weights=none"])
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.optim)
    for p in model.parameters():  # one step with zero gradients creates every momentum buffer
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {
        "iteration": 1,
        "window": {},
        "config": to_dict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-fs-mb-s", type=float, default=50.0, help="a busy NFS/Lustre client's write rate")
    args = parser.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "checkpoint.pt"
        for name in ("cityscapes_r50_seed", "cityscapes_r101_seed"):
            state = resumable_state(REPO / "configs" / f"{name}.yaml")
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                save_checkpoint(path, state)
                times.append(time.perf_counter() - start)
            mb = path.stat().st_size / 1e6
            assert load_checkpoint(path)["iteration"] == 1
            here = statistics.median(times)
            slow = mb / args.slow_fs_mb_s
            worst = max(worst, slow)
            rate = f"{slow:.1f} s at {args.slow_fs_mb_s:.0f} MB/s"
            print(f"{name}: {mb:.0f} MB in {here:.2f} s here ({mb / here:.0f} MB/s); {rate}")
    need = ITERATION_S + VALIDATION_S + worst
    lead = SlurmSpec().signal_lead_s
    print(
        f"stop needs ~{need:.0f} s (iteration {ITERATION_S:.1f} + validation under way {VALIDATION_S:.0f} + "
        f"checkpoint {worst:.1f}); signal lead {lead} s: {lead / need:.1f}x that"
    )


if __name__ == "__main__":
    main()
