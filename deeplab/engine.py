"""The iteration-based training loop: DDP, AMP, periodic validation, atomic checkpoints, exact resume.

The engine never knows how it was launched: a launcher passes a tracker (rank 0) and a StopFlag, and owns the
tracker's lifecycle. A stop request is agreed across ranks; the engine then checkpoints the current iteration
and returns ``status="interrupted"``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from deeplab import trajectory
from deeplab.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    peek_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from deeplab.config import Config, config_hash, flatten, save_config, to_dict
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.identity import dataset_inputs
from deeplab.data.loader import build_train_loader, build_val_dataset, check_data
from deeplab.distributed import (
    POLL_S,
    DistInfo,
    FailureWatch,
    PeerFailed,
    any_rank,
    data_workers,
    describe_process,
    init_distributed,
    is_distributed,
)
from deeplab.errors import DeeplabError
from deeplab.lease import check_run_dir, holds_run_dir
from deeplab.model import model_info
from deeplab.overlay import save_legend
from deeplab.progress import Progress
from deeplab.step import LossWindow, TrainParts, agree, build_parts, peak_memory_gb, train_step
from deeplab.tracking import (
    ARTIFACT_LEGEND,
    DATA_TIME,
    ITER_TIME,
    PEAK_MEMORY,
    STEP_TIME,
    TRAIN_LOSS,
    TRAIN_LR,
    NullTracker,
    Tracker,
)
from deeplab.usage import USAGE_NAME, Usage, recorded
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
        self.signals: set[int] = set()  # every signal received (a launcher requeues on some of them)

    def request(self, signum: int | None = None, _frame: object = None) -> None:
        if signum == signal.SIGINT and self.requested:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if signum is not None:
            self.signals.add(signum)


@contextlib.contextmanager
def signal_handlers(
    flag: StopFlag,
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT),
):
    """SIGTERM/SIGHUP/SIGUSR1/SIGUSR2/SIGINT → ``flag.request`` (a hang-up, e.g. an ssh drop, checkpoints like a
    SIGTERM); previous handlers restored on exit (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag.request) for s in signals}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _resume(path: Path, cfg: Config, parts: TrainParts, info: DistInfo, tracker: Tracker) -> dict:
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
    _check_trajectory(path, state, parts, _trajectory(cfg, parts), info, tracker)
    try:
        parts.model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise DeeplabError(f"{path}: weights do not fit this model ({str(err).splitlines()[0][:120]})") from None
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state


def _trajectory(cfg: Config, parts: TrainParts) -> dict:
    world = dist.get_world_size() if is_distributed() else 1
    return trajectory.trajectory(cfg, parts.model, parts.device, parts.scaler, world)


def _check_trajectory(path: Path, state: dict, parts: TrainParts, now: dict, info: DistInfo, tracker: Tracker) -> None:
    """Refuse a resume that would change the trajectory, unless accepted; an acceptance, or the unknown past of a
    checkpoint older than the record, is written into the checkpoint at once (rank 0) and tagged."""
    history, tags, note = trajectory.on_resume(path, state, now, trajectory.environment(parts.device))
    if tags:
        tracker.set_tags(tags)
    if info.is_main and note:
        print(f"{path}: {note}", flush=True)
        if history is not None:
            save_checkpoint(path, state | {"trajectory": now, "history": history})


def _checkpoint(
    path: Path,
    cfg: Config,
    parts: TrainParts,
    iteration: int,
    window: dict,
    final_metrics: dict | None = None,
    validate_first: bool = False,
) -> None:
    """A resumable checkpoint, or with ``final_metrics`` a finished run's: weights (none when
    ``train.keep_weights`` is false), config and metrics. Optimizer, scheduler and RNG state only serve a resume,
    which a finished run never does: dropping them halves the file (momentum is as large as the weights).
    Both record the trajectory and its history (carried on from the checkpoint being replaced).
    ``validate_first``: a stop skipped the validation due at ``iteration``; the resumed run runs it first."""
    now = _trajectory(cfg, parts)
    state = {
        "iteration": iteration,
        "window": dict(window),
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "validate_first": validate_first,
        "trajectory": now,
        "environment": trajectory.environment(parts.device),
        "history": _history(path, now),
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


def _history(path: Path, now: dict) -> list[dict]:
    """The history of the checkpoint being replaced (``_resume`` wrote any change into it), else a fresh one."""
    previous = peek_checkpoint(path)
    if previous is None or not previous.get("history"):  # a fresh run (a resume made sure there is one)
        return [trajectory.history_entry(0, now, None)]
    return previous["history"]


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
            # TF32 changes the numbers of every fp32 matmul/conv on Ampere and later: record what ran
            "info.tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "info.tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "info.cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    )
    tracker.log_artifact(run_dir / "config.yaml")


def _describe_run(cfg: Config, run_dir: Path, tracker: Tracker) -> None:
    """At every attempt (the tracker keeps one record of each): the datasets read, and the prediction panels'
    colour legend."""
    tracker.log_inputs(dataset_inputs(cfg))
    path = save_legend(run_dir / ARTIFACT_LEGEND)
    tracker.log_artifact(path, str(Path(ARTIFACT_LEGEND).parent))


@holds_run_dir  # one process trains a run directory: rank 0 holds its lease for the whole call
def train(
    cfg: Config,
    run_dir: Path,
    tracker: Tracker | None = None,
    *,
    stop: StopFlag | None = None,
    progress: str = "auto",
    on_iteration: Callable[[int], None] | None = None,
    device: str | None = None,
    on_peer_failure: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume from ``run_dir/checkpoint.pt``) until ``cfg.train.iterations`` or a stop request.

    ``device`` overrides ``train.device`` for this call (a launcher's choice, not part of the run's identity).
    A failure on any rank ends every rank (``FailureWatch``): this rank raises ``PeerFailed`` with the failing
    rank's reason, or, stuck in a collective, calls ``on_peer_failure(reason)`` and exits.
    """
    run_dir = Path(run_dir)
    info = init_distributed(device or cfg.train.device)
    with FailureWatch(info.rank, info.world_size, on_peer_failure) as watch:
        try:
            return _train(cfg, run_dir, info, tracker, stop or StopFlag(), progress, on_iteration)
        except PeerFailed:
            raise
        except DeeplabError as err:  # this rank's own failure, named: the others learn it at once
            watch.publish(str(err))
            raise
        except BaseException as err:
            peer = watch.peer_failure(wait_s=2 * POLL_S)  # a collective broken by another rank's exit echoes it
            if peer is not None:
                raise PeerFailed(peer) from err
            watch.publish(f"{err.__class__.__name__}: {err}")
            raise


def _train(
    cfg: Config,
    run_dir: Path,
    info: DistInfo,
    tracker: Tracker | None,
    stop: StopFlag,
    progress: str,
    on_iteration: Callable[[int], None] | None,
) -> TrainResult:
    started = time.monotonic()  # this attempt's device time starts here (the cost metrics)
    tracker = tracker if (tracker is not None and info.is_main) else NullTracker()
    print(f"deeplab: {describe_process(info, data_workers(cfg.data.num_workers))}", file=sys.stderr, flush=True)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # fixed training crops: cuDNN's autotuner picks the fastest kernels once (it may pick non-deterministic ones)
    torch.backends.cudnn.benchmark = info.device.type == "cuda" and not cfg.train.deterministic
    check_data(cfg, progress if info.is_main else "off")  # data errors surface before anything is written
    val_dataset = build_val_dataset(cfg)
    parts = build_parts(cfg, info)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if info.is_main:  # temp files of writes cut short by a kill -9 are never loaded: clear them
        for stale in [*run_dir.glob(f".{CHECKPOINT_NAME}.tmp-*"), *run_dir.glob(f".{USAGE_NAME}.tmp-*")]:
            stale.unlink(missing_ok=True)
    start, window, validate_first = 0, {"loss": 0.0, "count": 0, "time": 0.0}, False
    if ckpt_path.exists():
        state = _resume(ckpt_path, cfg, parts, info, tracker)
        start, window, validate_first = state["iteration"], state["window"], bool(state.get("validate_first"))
        if state.get("final_metrics") is not None:  # its cost as recorded (an attempt may have died before logging)
            tracker.log_metrics(recorded(run_dir) or {}, start)
            return TrainResult("finished", start, state["final_metrics"])
    elif info.is_main:
        _fresh_run(cfg, run_dir, info, tracker)
    usage = Usage(run_dir, info.world_size, started) if info.is_main else None
    if info.is_main:
        _describe_run(cfg, run_dir, tracker)
    batches = build_train_loader(cfg, info.rank, info.world_size, start)
    bar = Progress(
        progress, cfg.train.iterations, start, enabled=info.is_main, on_closed=stop.request if stop else None
    )
    try:
        window = LossWindow(info.device, window, info.rank)
        run = _Run(cfg, run_dir, info, parts, tracker, stop, bar, val_dataset, window, on_iteration, usage)
        if validate_first and start < cfg.train.iterations:  # the validation a stop skipped
            run.validate(start, final=False)
        done = _loop(run, batches, start)
        if done < cfg.train.iterations:
            run.log_cost(done)
            bar.message(f"stop requested: checkpoint at iteration {done} written to {ckpt_path}")
            return TrainResult("interrupted", done)
        if start < done:  # a stop during the final validation resumes from here, not from the last period
            run.checkpoint(done)
        metrics = run.validate(done, final=True)
        run.checkpoint(done, metrics)
        run.log_cost(done)  # the final validation and checkpoint included
        bar.message(f"finished: val mIoU {metrics['val/mIoU']:.2f} at iteration {done}")
        return TrainResult("finished", done, metrics)
    finally:
        if usage is not None:  # a failed or killed attempt's time counts too (a resume continues the sums)
            usage.save()
        bar.close()


@dataclass
class _Run:
    """Everything the loop needs about one run, built once by ``train()``; the log window lives on the device."""

    cfg: Config
    run_dir: Path
    info: DistInfo
    parts: TrainParts
    tracker: Tracker
    stop: StopFlag
    bar: Progress
    val_dataset: CityscapesSegmentation
    window: LossWindow
    on_iteration: Callable[[int], None] | None = None
    usage: Usage | None = None  # rank 0's

    def log(self, iteration: int, lr: float) -> float:
        w = self.window
        loss = w.mean(self.info.world_size)
        metrics = {
            TRAIN_LOSS: loss,
            TRAIN_LR: lr,
            ITER_TIME: w.time / w.count,
            DATA_TIME: w.data_time / w.count,
            STEP_TIME: (w.time - w.data_time) / w.count,
            PEAK_MEMORY: peak_memory_gb(self.info.device),
        }
        self.tracker.log_metrics(metrics, iteration)
        if iteration < self.cfg.train.iterations:  # the last iteration's cost point comes after the final validation
            self.log_cost(iteration)
        w.reset()
        return loss

    def log_cost(self, iteration: int) -> None:
        """The run's cost so far (every attempt's), saved in the run directory first, so what MLflow shows never
        runs ahead of what a resumed attempt continues from."""
        if self.usage is not None:
            self.tracker.log_metrics(self.usage.save(), iteration)

    def validate(self, iteration: int, final: bool) -> dict[str, float]:
        moved: DeeplabError | None = None
        if self.info.is_main:  # validation writes into the run dir too; all ranks leave together when it moved
            try:
                check_run_dir(self.run_dir)
            except DeeplabError as err:
                moved = err
        if any_rank(moved is not None, self.info.device):
            raise moved or PeerFailed("rank 0's run directory was moved or replaced")
        return validate(
            self.cfg, self.parts.model, self.val_dataset, self.info, self.tracker, self.run_dir, iteration, final=final
        )

    def checkpoint(self, iteration: int, final_metrics: dict | None = None, validate_first: bool = False) -> None:
        """Rank 0 writes (the tracker is flushed first, so metrics are never behind a checkpoint); every rank
        agrees on the outcome, so all leave this step together, and all raise when the write failed."""
        failed: BaseException | None = None
        if self.info.is_main:
            try:
                check_run_dir(self.run_dir)
                self.tracker.flush()
                path = self.run_dir / CHECKPOINT_NAME
                _checkpoint(path, self.cfg, self.parts, iteration, self.window.state(), final_metrics, validate_first)
            except Exception as err:
                failed = err
        if any_rank(failed is not None, self.info.device):
            if failed is not None:
                raise failed
            raise PeerFailed(f"rank 0 could not write the checkpoint of iteration {iteration}")


def _loop(run: _Run, batches: Iterator, start: int) -> int:
    """Iterations ``start+1 … iterations``; returns the number of completed iterations.

    Each iteration syncs host and device once, in ``agree``: the stop flag and the divergence check ride on one
    collective, and the loss reaches the host with it (logged every ``log_every``). ``on_iteration(i)`` runs before
    that, so a stop it requests takes effect at ``i``.
    """
    t = run.cfg.train
    run.parts.ddp_model.train()
    for done in range(start + 1, t.iterations + 1):
        tick = time.perf_counter()
        lr = run.parts.optimizer.param_groups[0]["lr"]
        images, masks = next(batches)
        fetched = time.perf_counter()  # waiting for data ends; the step runs until agree's host sync
        run.window.add(train_step(run.parts, images, masks))
        if run.on_iteration is not None:
            run.on_iteration(done)
        stopping, window_loss = agree(run.stop.requested, run.window.loss)
        run.window.close_step(time.perf_counter() - tick, window_loss, fetched - tick)
        if not math.isfinite(window_loss):
            message = f"training diverged at iteration {done}: loss is {window_loss} (try a lower optim.lr)"
            raise TrainingDiverged(message)
        logged = run.log(done, lr) if done % t.log_every == 0 else None
        run.bar.step(done, lr, logged)
        if done == t.iterations:
            return done
        due = bool(t.eval_every and done % t.eval_every == 0)
        if due and not stopping:  # an agreed stop skips it: the resumed run validates first
            run.validate(done, final=False)
            stopping = agree(run.stop.requested, run.window.loss)[0]  # a signal during validation
            due = False
        if stopping or (t.checkpoint_every and done % t.checkpoint_every == 0):
            run.checkpoint(done, validate_first=due)
        if stopping:
            return done
    return start
