"""bench/gpu_check.py before any GPU sees it: the CPU smoke runs every section; a failing or hanging section is
recorded with what it had measured, and the next one still runs."""

from __future__ import annotations

import importlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# bench/README.md's command, run from the repository root as a user runs it
SMOKE_COMMAND = "python bench/gpu_check.py --cpu-smoke --out {out}"


def test_cpu_smoke_runs_every_section_and_writes_the_table(tmp_path: Path) -> None:
    """The documented command in a user's environment: no OMP_NUM_THREADS (with it set to 1 the sections' old fork
    start hid a libgomp deadlock), no PYTHONPATH; ``python`` is the interpreter running the tests (the venv's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = SMOKE_COMMAND.format(out=shlex.quote(str(tmp_path)))
    assert command.replace(shlex.quote(str(tmp_path)), "DIR") in (REPO / "bench" / "README.md").read_text()
    proc = subprocess.run(
        ["bash", "-c", f"cd {shlex.quote(str(REPO))} && {command}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {name: s["status"] for name, s in report["sections"].items()}
    errors = {name: s.get("traceback", s.get("error")) for name, s in report["sections"].items()}
    assert status == {
        "env": "ok",
        "correctness": "ok",
        "ddp": "ok",
        "speed-resnet50": "ok",
        "speed-resnet101": "ok",
        "eval": "ok",
        "data": "ok",
        "compile-resnet50": "skipped",
        "compile-resnet101": "skipped",
    }, (errors, proc.stderr[-3000:])
    results = {name: s["results"] for name, s in report["sections"].items()}
    losses = results["correctness"]["losses"]
    assert set(losses) == {"fp32", "bf16", "bf16+channels_last"}  # fp16 is GPU-only (GradScaler)
    assert all(len(run) == 3 and all(math.isfinite(v) for v in run) for run in losses.values())
    assert results["correctness"]["syncbn"]["grads_finite"] is True
    ddp = results["ddp"]
    assert ddp["setup"] == {"backend": "gloo", "devices": ["cpu", "cpu"]} and ddp["ok"] is True
    assert ddp["syncbn"]["layer"] == "CpuSyncBatchNorm" and ddp["syncbn"]["worst"] < 1e-4
    assert ddp["ddp"]["wrapped"] == "DistributedDataParallel" and "CpuSyncBatchNorm" in ddp["ddp"]["norm_layers"]
    assert ddp["ddp"]["params_identical_across_ranks"] is True
    assert ddp["metric"]["equal_to_sum"] is True and ddp["metric"]["pixels"] == 2 * 2 * 48 * 80
    resume = ddp["resume"]
    assert resume["statuses"] == ["finished", "interrupted", "finished"] and resume["stopped_at"] == 2
    assert resume["bit_identical"] is True and resume["losses_resumed"] == resume["losses_straight"]
    assert len(resume["losses_straight"]) == resume["iterations"]
    for backbone in ("resnet50", "resnet101"):
        modes = results[f"speed-{backbone}"]["modes"]
        assert set(modes) == {"flops", "fp32", "bf16", "bf16+channels_last"} and modes["flops"] > 1e9
        assert all(m["s_per_step"] > 0 and m["mem_gib"] is None for k, m in modes.items() if k != "flops")
    assert "agree_overhead" in results["speed-resnet50"]
    per_image = results["eval"]["per_image"]
    assert len(per_image) == 4 and all(r["multi_flip_s"] > 0 and "multi_flip_mem_gib" in r for r in per_image.values())
    assert set(results["data"]["images_per_s"]) == set(results["data"]["cache_images_per_s"]) == {"1", "2"}
    assert set(results["data"]["demand"]) == {"resnet50", "resnet101"}
    assert all("cache_num_workers" in d for d in results["data"]["demand"].values())
    assert results["data"]["normalize_bit_equal"] == {"png": True, "cache": True}  # as trained: on the device
    table = (tmp_path / "gpu_check.md").read_text()
    assert "normalization equals the CPU arithmetic bit for bit: yes" in table
    assert "## Train step per GPU" in table and "| resnet101 | bf16+channels_last |" in table
    assert "## Two processes: gloo on cpu, cpu" in table and "stopped at 2, resumed to 4" in table
    assert "| workers | PNG images/s | decoded cache images/s |" in table and "from the cache" in table
    assert not list(tmp_path.glob("*partial*"))


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module("gpu_check")


# Sections run in their own processes (pickled to a forkserver child), so these are module-level functions.
def fails(ctx) -> None:
    ctx.record("first", 1.0)
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def hangs(ctx) -> None:
    helper = subprocess.Popen(["sleep", "600"])  # what a section starts (ranks, workers) dies with it
    ctx.record("helper_pid", helper.pid)
    time.sleep(600)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"  # a zombie is dead
    except (FileNotFoundError, IndexError):
        return True


def test_a_failing_or_hanging_section_is_recorded_and_keeps_its_figures(gpu_check, tmp_path: Path) -> None:
    sizes = gpu_check.Sizes.smoke()
    report = {"sections": {}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu_check, "MARGIN_S", 1)
        failed = gpu_check.run_section(fails, 60, sizes, "cpu", tmp_path, report)
        tick = time.monotonic()
        hung = gpu_check.run_section(hangs, 12, sizes, "cpu", tmp_path, report)  # time to import deeplab, loaded
    assert failed["status"] == "failed" and "illegal memory access" in failed["error"]
    assert failed["results"] == {"first": 1.0}
    assert hung["status"] == "timeout" and set(hung["results"]) == {"helper_pid"}
    assert time.monotonic() - tick < 30
    deadline = time.monotonic() + 10
    while not _gone(hung["results"]["helper_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(hung["results"]["helper_pid"])
    assert torch.cuda.is_initialized() is False  # the parent never touches CUDA
