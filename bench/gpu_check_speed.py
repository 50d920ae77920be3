"""Speed sections of bench/gpu_check.py: the train step (eager and compiled), whole-image evaluation, data loading."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gpu_check_sections import MODES, Ctx, SkipSection, one_gpu, seed_config, structured_batch
from torch.utils.flop_counter import FlopCounterMode

from deeplab.data.cache import build_cache
from deeplab.data.loader import build_train_loader
from deeplab.data.normalize import Normalize, reference
from deeplab.evaluate import predict
from deeplab.model import build_model
from deeplab.step import LossWindow, TrainParts, agree, build_parts, device_batch, train_step

COMPILE_ON_CPU = "CPU smoke: inductor on CPU compiles C++ for minutes; the compiled path is a GPU question"


def step_flops(parts: TrainParts, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """FLOPs of one train step (forward + backward; torch's flop counter, dense convs as here)."""
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(parts, *batch)
    return int(counter.get_total_flops())


def time_steps(parts: TrainParts, batches: list, ctx: Ctx, with_agree: bool = False) -> float:
    """Seconds per step over ``sizes.timed`` steps after ``sizes.warmup`` (one sync at the end, or per step)."""
    window = LossWindow(ctx.device)
    for i in range(ctx.sizes.warmup):
        train_step(parts, *batches[i % len(batches)])
    ctx.sync()
    tick = time.perf_counter()
    for i in range(ctx.sizes.timed):
        loss = train_step(parts, *batches[i % len(batches)])
        if with_agree:
            window.add(loss)
            agree(False, window.loss)
    ctx.sync()
    return (time.perf_counter() - tick) / ctx.sizes.timed


def _reset_peak_memory(ctx: Ctx) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)


def _peak_memory_gib(ctx: Ctx) -> float | None:
    """Peak memory torch allocated on the GPU since the last reset (None on CPU: no allocator to ask)."""
    return round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2) if ctx.device.type == "cuda" else None


def section_speed(ctx: Ctx, backbone: str) -> None:
    """s/step, images/s and TFLOP/s per mode; then the cost of per-step syncs (ours, and SyncBN's per layer)."""
    batches = [structured_batch(i, ctx.sizes, ctx.device) for i in range(2)]  # two, so no single batch sits in cache
    modes = {}
    parts = build_parts(seed_config(backbone, ctx.sizes), one_gpu(ctx.device))  # one model for every mode
    modes["flops"] = step_flops(parts, batches[0])
    for mode, (amp, channels_last) in MODES.items():
        if ctx.left() < 5:
            return
        _reset_peak_memory(ctx)
        if channels_last:
            parts.model.to(memory_format=torch.channels_last)  # in place: the optimizer keeps its parameters
        parts = dataclasses.replace(parts, amp=amp, channels_last=channels_last)
        seconds = time_steps(parts, batches, ctx)
        modes[mode] = {
            "s_per_step": seconds,
            "images_per_s": ctx.sizes.batch / seconds,
            "mem_gib": _peak_memory_gib(ctx),
        }
        ctx.record("modes", modes)
    if ctx.left() < 10:
        return
    if backbone == "resnet50":  # our one sync per step, against none until the end
        arms = {
            "plain": lambda: time_steps(parts, batches, ctx),
            "agree": lambda: time_steps(parts, batches, ctx, True),
        }
        ctx.record("agree_overhead", _abab(arms, ctx.sizes.rounds))
    elif ctx.device.type == "cuda":  # torch's SyncBatchNorm syncs once per BN layer on 2+ GPUs: emulate that
        norms = [m for m in parts.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        hooks: list = []

        def sync_each_bn() -> float:
            hooks.extend(m.register_forward_hook(lambda *_: torch.cuda.synchronize()) for m in norms)
            try:
                return time_steps(parts, batches, ctx)
            finally:
                for h in hooks:
                    h.remove()
                hooks.clear()

        arms = {"plain": lambda: time_steps(parts, batches, ctx), "sync_each_bn": sync_each_bn}
        ctx.record("bn_sync_overhead", {**_abab(arms, ctx.sizes.rounds), "bn_layers": len(norms)})


def _abab(arms: dict, rounds: int) -> dict:
    names = list(arms)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in names if i % 2 == 0 else names[::-1]:
            times[n].append(arms[n]())
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"s_per_step": med, "overhead": med[names[1]] / med[names[0]] - 1}


def section_compile(ctx: Ctx, backbone: str) -> None:
    """torch.compile (inductor, default mode) of the model in bf16 + channels_last: compile time, then s/step."""
    if ctx.device.type != "cuda":
        raise SkipSection(COMPILE_ON_CPU)
    parts = build_parts(seed_config(backbone, ctx.sizes, "bf16", True), one_gpu(ctx.device))
    parts.ddp_model = torch.compile(parts.model)
    batches = [structured_batch(i, ctx.sizes, ctx.device) for i in range(2)]
    tick = time.perf_counter()
    for i in range(3):  # the first compiles forward and backward; the next ones catch a recompile, if any
        train_step(parts, *batches[i % 2])
    ctx.sync()
    ctx.record("compile_s", time.perf_counter() - tick)
    seconds = time_steps(parts, batches, ctx)
    ctx.record("s_per_step", seconds)
    ctx.record("images_per_s", ctx.sizes.batch / seconds)


def section_eval(ctx: Ctx) -> None:
    """Seconds per whole image (sizes.eval_hw), single scale and the preset's 6 scales + flip, each timed warm (after
    one untimed pass of the same kind: cuDNN picks its algorithms per input size, the allocator grows per size), with
    the peak memory of each on a GPU."""
    out = {}
    h, w = ctx.sizes.eval_hw
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    for backbone in ("resnet50", "resnet101"):
        cfg = seed_config(backbone, ctx.sizes)
        model = build_model(cfg.model).to(ctx.device).eval()
        for amp in ("none", "bf16"):
            if ctx.left() < 5:
                return
            key = f"{backbone} {'fp32' if amp == 'none' else amp}"
            runs = {"single": ((1.0,), False, ctx.sizes.eval_reps), "multi_flip": (cfg.eval.scales, True, 1)}
            out[key] = {"scales": list(cfg.eval.scales)}
            for name, (scales, flip, reps) in runs.items():
                _reset_peak_memory(ctx)
                predict(model, image, scales, flip, amp).argmax(1)  # warm-up: every scale's sizes once
                out[key][f"{name}_s"] = _time_predict(model, image, scales, flip, amp, ctx, reps)
                out[key][f"{name}_mem_gib"] = _peak_memory_gib(ctx)
            ctx.record("per_image", out)


def _time_predict(model, image, scales: tuple[float, ...], flip: bool, amp: str, ctx: Ctx, reps: int) -> float:
    times = []
    for _ in range(reps):
        ctx.sync()
        tick = time.perf_counter()
        predict(model, image, scales, flip, amp).argmax(1)
        ctx.sync()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def make_data(root: Path, hw: tuple[int, int], images: int) -> None:
    """Full-size synthetic frames in the official layout (run in the background while the GPU sections run)."""
    from deeplab.data.synth import synthesize

    synthesize(root, train=images, val=1, height=hw[0], width=hw[1], seed=0)


def section_data(ctx: Ctx, data_root: Path) -> None:
    """Images/s that N workers deliver through the engine's loader (decode + seed augmentation), from the PNGs and
    from the decoded cache (``deeplab data cache``), vs the demand: as trained, each uint8 batch copied to the
    device and normalized there (``device_batch``, the step's own), whose result is checked against the CPU
    arithmetic once per path (``normalize_bit_equal``)."""
    while not (data_root / "leftImg8bit").is_dir():  # synthesize() renames the finished dataset into place
        if ctx.left() < 5:
            raise TimeoutError(f"the synthetic frames at {data_root} were not ready in time")
        time.sleep(0.5)
    cache = data_root.parent / "cache"
    build_cache(data_root, "train", cache, progress="off")
    rates: dict[str, dict[int, float]] = {"png": {}, "cache": {}}
    same: dict[str, bool] = {}
    for workers in ctx.sizes.workers:
        for path, extra in (("png", {}), ("cache", {"data.cache": str(cache)})):
            if ctx.left() < 3 + ctx.sizes.data_seconds:
                break
            overrides = {"data.root": str(data_root), "data.num_workers": workers, **extra}
            cfg = seed_config("resnet50", ctx.sizes, **overrides)
            norm = Normalize(cfg.data.mean, cfg.data.std)
            batches = build_train_loader(cfg, 0, 1, 0)
            images, masks = next(batches)  # workers start, first batch
            if path not in same:
                on_device = device_batch(images, masks, ctx.device, norm, False)[0].cpu()
                same[path] = images.dtype == torch.uint8 and torch.equal(
                    on_device, reference(images, cfg.data.mean, cfg.data.std)
                )
                ctx.record("normalize_bit_equal", same)
            n, tick = 0, time.perf_counter()
            while time.perf_counter() - tick < ctx.sizes.data_seconds or n < 2 * workers:
                device_batch(*next(batches), ctx.device, norm, False)
                n += 1
            ctx.sync()
            rates[path][workers] = n * ctx.sizes.batch / (time.perf_counter() - tick)
            del batches  # shuts the workers down
            ctx.record("images_per_s", rates["png"])
            ctx.record("cache_images_per_s", rates["cache"])
    demand = {}
    for backbone in ("resnet50", "resnet101"):
        modes = ctx.earlier.get(f"speed-{backbone}", {}).get("results", {}).get("modes", {})
        fastest = min((m["s_per_step"] for k, m in modes.items() if k != "flops"), default=None)
        if fastest:
            need = ctx.sizes.batch / fastest
            demand[backbone] = {"images_per_s": need}
            for path, by_workers in rates.items():
                enough = [w for w, r in by_workers.items() if r >= 1.25 * need]
                demand[backbone]["num_workers" if path == "png" else "cache_num_workers"] = min(enough, default=None)
    ctx.record("demand", demand)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gpu_check."))
