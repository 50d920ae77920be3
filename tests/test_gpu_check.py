"""bench/gpu_check.py before any GPU sees it: the CPU smoke runs every section; a failing or hanging section is
recorded with what it had measured, and the next one still runs."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_cpu_smoke_runs_every_section_and_writes_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--out", str(tmp_path)],
        cwd=REPO,
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
        "speed-resnet50": "ok",
        "speed-resnet101": "ok",
        "eval": "ok",
        "data": "ok",
        "compile-resnet50": "skipped",
        "compile-resnet101": "skipped",
    }, errors
    results = {name: s["results"] for name, s in report["sections"].items()}
    losses = results["correctness"]["losses"]
    assert set(losses) == {"fp32", "bf16", "bf16+channels_last"}  # fp16 is GPU-only (GradScaler)
    assert all(len(run) == 3 and all(math.isfinite(v) for v in run) for run in losses.values())
    assert results["correctness"]["syncbn"]["grads_finite"] is True
    for backbone in ("resnet50", "resnet101"):
        modes = results[f"speed-{backbone}"]["modes"]
        assert set(modes) == {"flops", "fp32", "bf16", "bf16+channels_last"} and modes["flops"] > 1e9
        assert all(m["s_per_step"] > 0 for k, m in modes.items() if k != "flops")
    assert "agree_overhead" in results["speed-resnet50"]
    assert len(results["eval"]["per_image"]) == 4
    assert set(results["data"]["images_per_s"]) == {"1", "2"}
    assert set(results["data"]["demand"]) == {"resnet50", "resnet101"}
    table = (tmp_path / "gpu_check.md").read_text()
    assert "## Train step per GPU" in table and "| resnet101 | bf16+channels_last |" in table
    assert not list(tmp_path.glob("*partial*"))


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module("gpu_check")


def test_a_failing_or_hanging_section_is_recorded_and_keeps_its_figures(gpu_check, tmp_path: Path) -> None:
    def fails(ctx, _data) -> None:
        ctx.record("first", 1.0)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def hangs(ctx, _data) -> None:
        ctx.record("first", 2.0)
        time.sleep(600)

    sections = {"fails": (5, fails), "hangs": (1, hangs)}
    sizes = gpu_check.Sizes.smoke()
    report = {"sections": {}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu_check, "SECTIONS", sections)
        mp.setattr(gpu_check, "MARGIN_S", 1)
        failed = gpu_check.run_section("fails", 5, sizes, "cpu", tmp_path, report, {})
        tick = time.monotonic()
        hung = gpu_check.run_section("hangs", 1, sizes, "cpu", tmp_path, report, {})
    assert failed["status"] == "failed" and "illegal memory access" in failed["error"]
    assert failed["results"] == {"first": 1.0}
    assert hung["status"] == "timeout" and hung["results"] == {"first": 2.0}
    assert time.monotonic() - tick < 30
    assert torch.cuda.is_initialized() is False  # the parent never touches CUDA: forking stays safe
