"""Real sizes on CPU: the seed preset on full-size frames, 2 gloo ranks, a stop and a resume, a 12-pass evaluation.

Full-size 2048x1024 synthetic data (the project's generator, official layout) and configs/cityscapes_r101_seed.yaml
(ResNet-101, 768² crops, OHEM) with weights none: 2 images per rank, 2 ranks launched the way SLURM or torchrun
would (RANK/WORLD_SIZE/MASTER_* set, gloo), 2 DataLoader workers each, 3 iterations, an in-training validation over
the 2 full-size validation frames at iteration 2. Right after iteration 2 is logged, rank 1 alone gets SIGTERM: the
ranks must agree to stop, checkpoint at 2 and exit 3. The same command then resumes and finishes (iteration 3, final
validation); `deeplab evaluate` scores the finished checkpoint on 1 full-size frame with 6 scales + flip.

Checks every step (exit codes, checkpoint iterations, every step logged once) and exits 1 when any fails; prints
wall times, peak RSS per rank (from the kernel, wait4) and per DataLoader worker (sampled), checkpoint sizes. Two
such ranks take ~11 GB: it refuses to start with less than 12 GiB available.

    python bench/drill_real_size.py [--work DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from deeplab.checkpoint import load_checkpoint
from deeplab.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "cityscapes_r101_seed.yaml"
NEED_GIB = 12
SCALES = "0.5,0.75,1,1.25,1.5,1.75"


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _hwm_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


class WorkerPeaks(threading.Thread):
    """Samples the high-water RSS of the ranks' children (DataLoader workers) until stopped."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for pid in self.pids:
                try:
                    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                except OSError:
                    continue
                self.peak = max([self.peak, *(_hwm_gib(int(c)) for c in children)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Exit code and peak RSS in GiB of ``proc`` itself (the kernel's ru_maxrss, in KiB on Linux)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 2**20


def train_ranks(run_dir: Path, overrides: list[str], logs: Path, interrupt: bool) -> dict:
    """Both ranks of one attempt; with ``interrupt``, SIGTERM to rank 1 once rank 0 logs iteration 2."""
    port = _free_port()
    cmd = [sys.executable, "-m", "deeplab", "train", str(PRESET), "--run-dir", str(run_dir), "--progress", "lines"]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    procs, outs = [], []
    tick = time.perf_counter()
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        out = open(logs / f"rank{rank}.log", "a")  # noqa: SIM115 (closed below; the child writes to it)
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        outs.append(out)
    peaks = WorkerPeaks([p.pid for p in procs])
    peaks.start()
    signalled_at = None
    if interrupt:
        log = logs / "rank0.log"
        while procs[0].poll() is None and signalled_at is None:
            if "iter 2/3" in log.read_text():
                procs[1].send_signal(signal.SIGTERM)
                signalled_at = time.perf_counter() - tick
            time.sleep(0.2)
    results = [_wait(p) for p in procs]
    peaks.done.set()
    for out in outs:
        out.close()
    return {
        "wall_s": time.perf_counter() - tick,
        "exit": [code for code, _ in results],
        "rss_gib": [rss for _, rss in results],
        "worker_rss_gib": peaks.peak,
        "signalled_at_s": signalled_at,
    }


def _steps(run_dir: Path, key: str) -> list[int]:
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [p["step"] for p in points if p["key"] == key]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="run directory and logs (default: a temp dir)")
    parser.add_argument("--data", type=Path, default=None, help="reuse (or create) the full-size data here")
    args = parser.parse_args()
    if available_gib() < NEED_GIB:
        print(f"error: the drill needs ~{NEED_GIB} GiB; {available_gib():.1f} GiB available", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="drill_real_size."))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data or work / "cityscapes"
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failures.append(what)

    tick = time.perf_counter()
    if not (data / "leftImg8bit").is_dir():
        synthesize(data, train=4, val=2, height=1024, width=2048, seed=0)
    print(f"data: 4 train + 2 val frames of 2048x1024 at {data} ({time.perf_counter() - tick:.0f} s)", flush=True)
    run_dir = work / "run"
    overrides = [
        f"data.root={data}",
        "model.weights=none",
        "data.batch_size_per_gpu=2",
        "data.num_workers=2",
        "train.iterations=3",
        "train.eval_every=2",
        "train.checkpoint_every=0",
        "train.log_every=1",
        "train.device=cpu",
        "schedule.warmup_iters=1",
        "eval.scales=[1.0]",  # the final validation stays single-scale: evaluate below does the 12 passes
        "eval.flip=false",
    ]
    first = train_ranks(run_dir, overrides, work, interrupt=True)
    print(f"attempt 1 (SIGTERM to rank 1 after iteration 2): {json.dumps(first)}", flush=True)
    check(first["signalled_at_s"] is not None, "rank 0 logged iteration 2 and rank 1 was signalled")
    check(first["exit"] == [3, 3], f"both ranks exit 3 (interrupted), got {first['exit']}")
    ckpt = run_dir / "checkpoint.pt"
    resumable_mb = ckpt.stat().st_size / 1e6 if ckpt.exists() else 0.0
    check(ckpt.exists() and load_checkpoint(ckpt)["iteration"] == 2, "a resumable checkpoint at iteration 2")
    second = train_ranks(run_dir, overrides, work, interrupt=False)
    print(f"attempt 2 (resume): {json.dumps(second)}", flush=True)
    check(second["exit"] == [0, 0], f"both ranks finish, got {second['exit']}")
    state = load_checkpoint(ckpt) if ckpt.exists() else {}
    finished_mb = ckpt.stat().st_size / 1e6 if ckpt.exists() else 0.0
    check(state.get("iteration") == 3 and state.get("final_metrics") is not None, "a finished checkpoint at 3")
    check(_steps(run_dir, "train/loss") == [1, 2, 3], "train/loss logged at steps 1, 2, 3 exactly once")
    check(_steps(run_dir, "val/mIoU") == [2, 3], "val/mIoU logged at steps 2 (in training) and 3 (final)")

    cmd = [sys.executable, "-m", "deeplab", "evaluate", "--checkpoint", str(ckpt), "--scales", SCALES, "--flip"]
    cmd += ["--set", "data.val_max_images=1", "--json", str(work / "evaluate.json")]
    tick = time.perf_counter()
    with open(work / "evaluate.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"}
        )
        code, rss = _wait(proc)
    evaluate_s = time.perf_counter() - tick
    print(f"evaluate, 6 scales + flip, 1 frame: exit {code}, {evaluate_s:.0f} s, peak RSS {rss:.2f} GiB", flush=True)
    check(code == 0 and json.loads((work / "evaluate.json").read_text())["numImages"] == 1, "evaluate scored 1 frame")

    print(f"\nreal-size drill, torch {torch.__version__}, work dir {work}")
    for name, a in (("attempt 1 (to the interruption)", first), ("attempt 2 (resume to the end)", second)):
        print(
            f"{name:33s} wall {a['wall_s']:6.0f} s  peak RSS rank 0 {a['rss_gib'][0]:.2f} GiB, rank 1 "
            f"{a['rss_gib'][1]:.2f} GiB, a DataLoader worker {a['worker_rss_gib']:.2f} GiB"
        )
    print(f"{'evaluate (6 scales + flip, 1 frame)':33s} wall {evaluate_s:6.0f} s  peak RSS {rss:.2f} GiB")
    print(f"checkpoint: resumable {resumable_mb:.0f} MB (weights + momentum), finished {finished_mb:.0f} MB (weights)")
    print("PASS" if not failures else f"FAIL: {'; '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
