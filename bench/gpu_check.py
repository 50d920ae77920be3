"""The prepared GPU check (issue 12): correctness, speed, evaluation and data figures in one command, < 6 minutes.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default: the current directory), rewritten after every
section. Each section runs in its own process (forked from a forkserver that only imported torch, never from this
process; in its own process group) under its own time limit, so a section that fails, hangs or crashes is recorded
(with the figures it had recorded so far), it and its own children are killed, and the next one runs. Models start
from random weights (none can be downloaded there). ``--cpu-smoke`` runs the same code at tiny sizes on CPU
(tested in CI).

    python bench/gpu_check.py [--out DIR] [--budget SECONDS] [--only a,b] [--cpu-smoke]

bench/README.md gives the exact command for the device machine (Python 3.12, torch 2.11, cityscapesscripts carried
as a wheel) and how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

# Sections never fork from this process: importing deeplab already runs an OpenMP-parallel torch op, and a child
# forked after that waits forever at libgomp's barrier when it runs torch ops (a fork keeps the parent's thread pool
# state, not its threads). They fork from a forkserver: a fresh interpreter that only imports torch and torchvision
# (no torch op runs there; the ~4 s of imports are paid once, not per section). The NVML-based availability check
# keeps every process off cuInit until its section uses CUDA.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the device machine has no install of this repo

import torch
from gpu_check_ddp import section_ddp
from gpu_check_report import render
from gpu_check_sections import Ctx, Sizes, SkipSection, section_correctness, section_env
from gpu_check_speed import (
    COMPILE_ON_CPU,
    make_data,
    scratch_dir,
    section_compile,
    section_data,
    section_eval,
    section_speed,
)

START = multiprocessing.get_context("forkserver")
START.set_forkserver_preload(["torch", "torchvision"])  # never deeplab or this module: they run torch ops at import
SMOKE_LIMIT_S = 180  # on CPU (--cpu-smoke) every section may take this long: a loaded machine is slow
MARGIN_S = 15  # a section checks its deadline between steps; one step may run past it


def sections(data_root: Path) -> dict[str, tuple[int, Callable[[Ctx], None]]]:
    """name → (seconds it may take on an H200, the section: a picklable callable of the Ctx, run in its own process).

    The compile sections come last, so that everything else is in when time runs out."""
    return {
        "env": (30, section_env),
        "correctness": (90, section_correctness),
        "ddp": (60, section_ddp),
        "speed-resnet50": (60, partial(section_speed, backbone="resnet50")),
        "speed-resnet101": (75, partial(section_speed, backbone="resnet101")),
        "eval": (60, section_eval),
        "data": (60, partial(section_data, data_root=data_root)),
        "compile-resnet50": (150, partial(section_compile, backbone="resnet50")),
        "compile-resnet101": (150, partial(section_compile, backbone="resnet101")),
    }


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _child(section: Callable, sizes: Sizes, device: str, deadline: float, partial_path: Path, earlier: dict) -> None:
    """Runs in the section's own process: the section, its figures written to ``partial_path`` as they come."""
    os.setpgrp()  # its own process group: a timeout kills the section with whatever it started (ranks, workers)
    # The child inherits the forkserver as its default start method; the engine's DataLoader workers are forked in a
    # real run (a worker sets 1 thread first, which keeps it clear of the libgomp deadlock): measure that.
    multiprocessing.set_start_method(None, force=True)
    if sizes.threads and section is not section_env:  # env measures the machine's matmul ceiling on all its threads
        torch.set_num_threads(sizes.threads)
    state: dict = {"status": "running", "results": {}}

    def record(key: str, value: object) -> None:
        state["results"][key] = value
        _write(partial_path, json.dumps(state, default=str))

    ctx = Ctx(sizes, torch.device(device), deadline, record, earlier)
    try:
        section(ctx)
        state["status"] = "ok"
    except SkipSection as why:
        state.update(status="skipped", error=str(why))
    except Exception as err:  # recorded, not fatal: the next section runs
        state.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-2000:])
    _write(partial_path, json.dumps(state, default=str))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone: nothing of the section is left
        os.killpg(pgid, signal.SIGKILL)


def run_section(section: Callable, limit: float, sizes: Sizes, device: str, out: Path, report: dict) -> dict:
    """One section in its own process under ``limit`` seconds (+ MARGIN_S); its result, whatever happened."""
    partial_path = out / "gpu_check.partial.json"
    partial_path.unlink(missing_ok=True)
    tick = time.monotonic()
    args = (section, sizes, device, tick + limit, partial_path, dict(report["sections"]))
    proc = START.Process(target=_child, args=args)
    proc.start()
    try:
        proc.join(limit + MARGIN_S)
    finally:  # on a timeout, Ctrl-C or SIGTERM here: nothing the section started outlives it
        _kill_group(proc.pid)
        proc.kill()  # in case it had not yet made its group (still importing)
        proc.join()
    result = json.loads(partial_path.read_text()) if partial_path.exists() else {"results": {}}
    partial_path.unlink(missing_ok=True)
    if result.get("status") in (None, "running"):
        result["status"] = "timeout" if proc.exitcode == -signal.SIGKILL else "crashed"
        result["error"] = f"stopped after {time.monotonic() - tick:.0f} s (limit {limit:.0f} s, exit {proc.exitcode})"
    result["seconds"] = round(time.monotonic() - tick, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.cwd(), help="where gpu_check.json/.md go (default: cwd)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 330; smoke 900)")
    parser.add_argument("--only", default="", help="comma-separated section names (default: all)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: proves the script, not a GPU")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # run the finally clauses: kill sections
    names = list(sections(Path()))
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - set(names))
    if unknown:
        print(f"error: --only: unknown section {unknown[0]} (known: {', '.join(names)})", file=sys.stderr)
        return 2
    if importlib.util.find_spec("cityscapesscripts") is None:  # deeplab's label table comes from it
        print("error: cityscapesscripts is not installed: carry its wheel (see bench/README.md)", file=sys.stderr)
        return 2
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: no CUDA device here; use --cpu-smoke to check the script on CPU", file=sys.stderr)
        return 2
    sizes = Sizes.smoke() if args.cpu_smoke else Sizes()
    device = "cpu" if args.cpu_smoke else "cuda"
    budget = args.budget or (900.0 if args.cpu_smoke else 330.0)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_s": budget,
        "sizes": vars(sizes),
        "sections": {},
    }
    data_root = scratch_dir() / "cityscapes"
    maker = START.Process(target=make_data, args=(data_root, sizes.data_hw, sizes.data_images))
    maker.start()  # full-size frames take a while on CPU: made while the GPU sections run
    try:
        for name, (seconds, section) in sections(data_root).items():
            seconds = SMOKE_LIMIT_S if args.cpu_smoke else seconds
            left = budget - (time.monotonic() - start)
            if (only and name not in only) or left < 5:
                reason = "not in --only" if only and name not in only else f"budget of {budget:.0f} s spent"
                report["sections"][name] = {"status": "skipped", "error": reason, "results": {}}
                continue
            if args.cpu_smoke and name.startswith("compile-"):  # known without an interpreter's start (5-10 s here)
                report["sections"][name] = {"status": "skipped", "error": COMPILE_ON_CPU, "results": {}}
                continue
            if name == "data" and maker.exitcode not in (None, 0):
                error = f"making the data failed (exit {maker.exitcode}; its traceback is on stderr)"
                report["sections"][name] = {"status": "failed", "error": error, "results": {}}
                continue
            print(f"== {name} (up to {min(seconds, left):.0f} s)", flush=True)
            report["sections"][name] = run_section(section, min(seconds, left), sizes, device, args.out, report)
            result = report["sections"][name]
            print(f"   {result['status']} in {result['seconds']} s {result.get('error', '')}", flush=True)
            _write(args.out / "gpu_check.json", json.dumps(report, indent=1, default=str))
            _write(args.out / "gpu_check.md", render(report))
    finally:
        if maker.is_alive():
            maker.kill()
        maker.join()
        shutil.rmtree(data_root.parent, ignore_errors=True)
    report["total_s"] = round(time.monotonic() - start, 1)
    _write(args.out / "gpu_check.json", json.dumps(report, indent=1, default=str))
    _write(args.out / "gpu_check.md", render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
