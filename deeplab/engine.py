"""The iteration-based training loop: DDP, AMP, periodic validation, atomic checkpoints, exact resume.

The engine never knows how it was launched: a launcher passes a tracker (rank 0) and a StopFlag, and owns the
tracker's lifecycle. A stop request is agreed across ranks; the engine then checkpoints the current iteration
and returns ``status="interrupted"``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from deeplab.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from deeplab.config import Config, config_hash, flatten, save_config, to_dict
from deeplab.data.loader import build_train_loader, build_val_dataset, check_data
from deeplab.distributed import DistInfo, any_rank, init_distributed, mean_over_ranks
from deeplab.errors import DeeplabError
from deeplab.evaluate import autocast
from deeplab.loss import build_loss
from deeplab.model import build_model, model_info
from deeplab.norm import convert_sync_batchnorm
from deeplab.progress import Progress
from deeplab.schedule import build_optimizer, build_scheduler
from deeplab.tracking import ITER_TIME, TRAIN_LOSS, TRAIN_LR, NullTracker, Tracker
from deeplab.validation import validate


class TrainingDiverged(DeeplabError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    status: str  # "finished" or "interrupted"
    iteration: int
    metrics: dict[str, float] = field(default_factory=dict)


class StopFlag:
    """Set by a signal handler or a launcher; the engine checkpoints and returns at the next iteration."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    def request(self, signum: int | None = None, _frame: object = None) -> None:
        self.requested, self.signum = True, signum


@contextlib.contextmanager
def signal_handlers(flag: StopFlag, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)):
    """SIGTERM/SIGUSR1/SIGUSR2 → ``flag.request``; previous handlers restored on exit (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag.request) for s in signals}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class _Parts:
    model: torch.nn.Module  # unwrapped
    net: torch.nn.Module  # DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module


def _build(cfg: Config, info: DistInfo) -> _Parts:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(info.device)
    if info.world_size > 1 and cfg.model.sync_bn:
        model = convert_sync_batchnorm(model, info.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.train.amp == "fp16" and info.device.type == "cuda")
    net = model
    if info.world_size > 1:
        ids = [info.device.index] if info.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return _Parts(model, net, optimizer, scheduler, scaler, build_loss(cfg.loss).to(info.device))


def _resume(path: Path, cfg: Config, parts: _Parts) -> dict:
    state = load_checkpoint(path)
    if state["config_hash"] != config_hash(cfg):
        old = flatten(state["config"])
        diff = [k for k, v in flatten(to_dict(cfg)).items() if old.get(k) != v]
        raise DeeplabError(
            f"{path}: checkpoint is of config {state['config_hash']}, this run is {config_hash(cfg)} "
            f"(differs in {', '.join(diff[:5]) or 'non-identity keys'}); use another --run-dir"
        )
    if state.get("final_metrics") is not None:  # a finished run: nothing to restore, train() returns at once
        return state
    try:
        parts.model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise DeeplabError(f"{path}: weights do not fit this model ({str(err).splitlines()[0][:120]})") from None
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state


def _checkpoint(
    path: Path, cfg: Config, parts: _Parts, iteration: int, window: dict, final_metrics: dict | None = None
) -> None:
    """A resumable checkpoint, or with ``final_metrics`` a finished run's: weights (none when
    ``train.keep_weights`` is false), config and metrics. Optimizer, scheduler and RNG state only serve a resume,
    which a finished run never does: dropping them halves the file (momentum is as large as the weights)."""
    state = {
        "iteration": iteration,
        "window": dict(window),
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
    }
    if final_metrics is None:
        state |= {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": rng_state(),
        }
    else:
        state |= {"model": parts.model.state_dict() if cfg.train.keep_weights else {}, "final_metrics": final_metrics}
    save_checkpoint(path, state)


def _fresh_run(cfg: Config, run_dir: Path, info: DistInfo, tracker: Tracker) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    tracker.log_params(flatten(to_dict(cfg)))
    cost = model_info(cfg.model, cfg.data.crop_size)  # cost is part of the res50-vs-res101 question
    tracker.log_params(
        {
            "info.params": cost["params"],
            "info.gflops": cost["gflops"],
            "info.config_hash": config_hash(cfg),
            "info.world_size": info.world_size,
            "info.device": info.device.type,
        }
    )
    tracker.log_artifact(run_dir / "config.yaml")


def train(
    cfg: Config,
    run_dir: Path,
    tracker: Tracker | None = None,
    *,
    stop: StopFlag | None = None,
    progress: str = "auto",
    on_iteration: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or resume from ``run_dir/checkpoint.pt``) until ``cfg.train.iterations`` or a stop request."""
    run_dir = Path(run_dir)
    info = init_distributed(cfg.train.device)
    tracker = tracker if (tracker is not None and info.is_main) else NullTracker()
    stop = stop or StopFlag()
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    check_data(cfg, progress if info.is_main else "off")  # data errors surface before anything is written
    val_dataset = build_val_dataset(cfg)
    parts = _build(cfg, info)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if info.is_main:  # temp files of writes cut short by a kill -9 are never loaded: clear them
        for stale in run_dir.glob(f".{CHECKPOINT_NAME}.tmp-*"):
            stale.unlink(missing_ok=True)
    start, window = 0, {"loss": 0.0, "count": 0, "time": 0.0}
    if ckpt_path.exists():
        state = _resume(ckpt_path, cfg, parts)
        start, window = state["iteration"], state["window"]
        if state.get("final_metrics") is not None:
            return TrainResult("finished", start, state["final_metrics"])
    elif info.is_main:
        _fresh_run(cfg, run_dir, info, tracker)
    batches = build_train_loader(cfg, info.rank, info.world_size, start)
    bar = Progress(progress, cfg.train.iterations, start, enabled=info.is_main)
    try:

        def validate_at(iteration: int) -> None:
            validate(cfg, parts.model, val_dataset, info, tracker, run_dir, iteration, final=False)

        done = _loop(cfg, run_dir, parts, info, tracker, stop, bar, batches, start, window, validate_at, on_iteration)
        if done < cfg.train.iterations:
            bar.message(f"stop requested: checkpoint at iteration {done} written to {ckpt_path}")
            return TrainResult("interrupted", done)
        metrics = validate(cfg, parts.model, val_dataset, info, tracker, run_dir, done, final=True)
        tracker.flush()
        if info.is_main:
            _checkpoint(ckpt_path, cfg, parts, done, window, metrics)
        bar.message(f"finished: val mIoU {100 * metrics['val/mIoU']:.2f} at iteration {done}")
        return TrainResult("finished", done, metrics)
    finally:
        bar.close()


def _loop(
    cfg: Config,
    run_dir: Path,
    parts: _Parts,
    info: DistInfo,
    tracker: Tracker,
    stop: StopFlag,
    bar: Progress,
    batches: Iterator,
    start: int,
    window: dict,
    validate_at: Callable[[int], None],
    on_iteration: Callable[[int], None] | None,
) -> int:
    """Iterations ``start+1 … iterations``; returns the number of completed iterations."""
    t = cfg.train
    ckpt_path = run_dir / CHECKPOINT_NAME
    parts.net.train()
    for done in range(start + 1, t.iterations + 1):
        tick = time.perf_counter()
        images, masks = next(batches)
        images, masks = images.to(info.device, non_blocking=True), masks.to(info.device, non_blocking=True)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        lr = parts.optimizer.param_groups[0]["lr"]
        with autocast(info.device, t.amp):
            logits = parts.net(images)
        loss = parts.criterion(logits.float(), masks)
        value = float(loss.detach())
        if any_rank(not torch.isfinite(loss.detach()).item(), info.device):
            raise TrainingDiverged(f"training diverged at iteration {done}: loss is {value} (try a lower optim.lr)")
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        window["loss"] += value
        window["count"] += 1
        window["time"] += time.perf_counter() - tick
        logged = None
        if done % t.log_every == 0:
            logged = mean_over_ranks(window["loss"] / window["count"], info.device)
            tracker.log_metrics({TRAIN_LOSS: logged, TRAIN_LR: lr, ITER_TIME: window["time"] / window["count"]}, done)
            window.update(loss=0.0, count=0, time=0.0)
        bar.step(done, lr, logged)
        if on_iteration is not None:
            on_iteration(done)
        if done == t.iterations:
            return done
        if t.eval_every and done % t.eval_every == 0:
            validate_at(done)
        stopping = any_rank(stop.requested, info.device)
        if stopping or (t.checkpoint_every and done % t.checkpoint_every == 0):
            tracker.flush()
            if info.is_main:
                _checkpoint(ckpt_path, cfg, parts, done, window)
        if stopping:
            return done
    return start
