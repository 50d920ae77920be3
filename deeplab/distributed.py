"""Process-group set-up from the environment (torchrun variables), the device each rank uses, and failing together.

The per-step agreement is ``deeplab.step.agree``. ``FailureWatch`` is the out-of-band channel: a rank that raises
publishes its one-line reason in the rendezvous store, and a thread on every rank ends its process when another
rank has failed, so that no rank idles in a collective until the process group's timeout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from deeplab.errors import DeeplabError

# A rank that raised is seen by the others within POLL_S; one that stopped beating (killed, segfault) within
# DEAD_AFTER_S. Both are far below the collectives' own timeout, which only a hang no rank reports can reach.
POLL_S = 1.0
DEAD_AFTER_S = 60.0
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
EXIT_PEER_FAILED = 4  # a process ended by FailureWatch because another rank failed


class PeerFailed(DeeplabError):
    """Another rank failed first; this rank stops with that rank's reason."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise DeeplabError(f"{name}={text!r} must be an integer (the launcher's environment)") from None
    if value < minimum:
        raise DeeplabError(f"{name}={value} must be >= {minimum} (the launcher's environment)")
    return value


def cuda_index(local_rank: int, visible: int) -> int:
    """The CUDA device of a rank under either GPU binding a site may use: every task sees the node's GPUs (the
    rank's is its local rank) or only its own (``CUDA_VISIBLE_DEVICES`` narrowed per task: always device 0)."""
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise DeeplabError(
        f"LOCAL_RANK={local_rank} but this task sees {visible} GPUs "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): ask for one GPU per task"
    )


def resolve_device(device: str) -> torch.device:
    """``cuda`` without a usable CUDA device is an error, never a silent CPU run; ``auto`` takes CUDA if usable."""
    if device == "cpu":
        return torch.device("cpu")
    usable = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if device == "cuda" and not usable:
        seen = ", ".join(
            f"{k}={os.environ[k]!r}"
            for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
            if k in os.environ
        )
        raise DeeplabError(
            f"train.device is cuda but torch sees no usable CUDA device ({seen or 'no GPU variables set'}); "
            "run on a GPU node, or set train.device=cpu (--device cpu) on purpose"
        )
    if not usable:
        return torch.device("cpu")
    return torch.device("cuda", cuda_index(_env_int("LOCAL_RANK", 0, 0), torch.cuda.device_count()))


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (if any).

    gloo on CPU, nccl on CUDA. ``device`` is ``train.device`` (or a launcher's override): see ``resolve_device``.
    """
    world, rank, local_rank = _env_int("WORLD_SIZE", 1, 1), _env_int("RANK", 0, 0), _env_int("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise DeeplabError(f"RANK={rank} must be below WORLD_SIZE={world} (the launcher's environment)")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    return DistInfo(rank, world, local_rank, dev, backend)


def describe_process(info: DistInfo, workers: int) -> str:
    """The one line a job logs per rank at start: where it runs, on what, and how it meets the other ranks."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    meet = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}" if info.world_size > 1 else "-"
    return (
        f"rank {info.rank}/{info.world_size} (local {info.local_rank}) on {socket.gethostname()} pid {os.getpid()}: "
        f"{len(cpus)} CPUs {_ranges(cpus)}, {gpus} GPUs visible "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}), device {info.device}, "
        f"backend {info.backend or '-'}, rendezvous {meet}, {workers} data workers"
    )


def _ranges(values: list[int]) -> str:
    spans, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            spans.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(spans)


def usable_cpus() -> int:
    """CPUs this rank may use: its affinity, and no more than SLURM allocated to the task (a site without CPU
    binding leaves every task the whole node's affinity)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cpus, int(allocated)) if allocated.isdigit() and int(allocated) > 0 else cpus


def data_workers(requested: int) -> int:
    """``data.num_workers`` capped at the CPUs this rank may use: more workers than cores only add contention
    (the stream is the same whatever the number of workers)."""
    return min(requested, usable_cpus())


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (all ranks get the same answer); one collective, outside the loop."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class FailureWatch:
    """Ends every rank soon after any rank fails, with the failing rank's reason.

    A rank that raises calls ``publish(reason)`` (its main thread, before the exception leaves ``train``); each
    rank's watcher thread polls the rendezvous store every ``POLL_S`` and, when another rank has published or has
    stopped beating for ``DEAD_AFTER_S`` (or rank 0, which serves the store, is gone), calls ``on_peer_failure``
    with a one-line reason and exits the process with ``EXIT_PEER_FAILED``. Without a process group it does nothing.
    """

    def __init__(self, rank: int, world_size: int, on_peer_failure: Callable[[str], None] | None = None) -> None:
        self.rank, self.world = rank, world_size
        self.on_peer_failure = on_peer_failure
        self._store = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FailureWatch:
        if self.world > 1 and is_distributed():
            from torch.distributed.distributed_c10d import _get_default_store  # the rendezvous's TCPStore

            self._store = dist.PrefixStore("deeplab/", _get_default_store())
            self._store.add(f"beat/{self.rank}", 1)
            self._thread = threading.Thread(target=self._watch, name="deeplab-failure-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._store is not None and exc[0] is None:
            # a rank that ended well is not "dead" to the others; rank 0 may be gone after the final agreement
            with contextlib.suppress(Exception):
                self._store.set(f"done/{self.rank}", "1")

    def publish(self, reason: str) -> None:
        """This rank failed: tell the others (best effort; the store may already be gone)."""
        if self._store is None:
            return
        with contextlib.suppress(Exception):  # the others then see this rank stop beating
            self._store.set(f"failed/{self.rank}", reason.encode()[:2000])
            self._store.add("failures", 1)

    def peer_failure(self, wait_s: float = 0.0) -> str | None:
        """The first other rank's published reason, waiting up to ``wait_s`` for one to appear."""
        if self._store is None:
            return None
        deadline = time.monotonic() + wait_s
        while True:
            found = self._published()
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(min(0.1, POLL_S))

    def _published(self) -> str | None:
        try:
            if self._store.add("failures", 0) == 0:
                return None
            for r in range(self.world):
                if r != self.rank and self._store.check([f"failed/{r}"]):
                    return f"rank {r} failed: {self._store.get(f'failed/{r}').decode(errors='replace')}"
        except Exception:
            return None
        return None

    def _watch(self) -> None:
        beats = {r: (0, time.monotonic()) for r in range(self.world) if r != self.rank}
        gone_since = None
        while not self._stop.wait(POLL_S):
            try:
                self._store.add(f"beat/{self.rank}", 1)
                reason = self._published()
                now = time.monotonic()
                for r, (last, seen) in beats.items():
                    count = self._store.add(f"beat/{r}", 0)
                    if count != last:
                        beats[r] = (count, now)
                    elif now - seen > DEAD_AFTER_S and not self._store.check([f"done/{r}"]):
                        reason = reason or f"rank {r} stopped answering for {DEAD_AFTER_S:.0f} s (killed or hung)"
                gone_since = None
            except Exception as err:  # the store lives in rank 0's process: it is gone, or the network is
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since < 2 * POLL_S or self._stop.is_set():
                    continue
                reason = f"rank 0 is gone (the rendezvous store stopped answering: {err.__class__.__name__})"
            if reason is not None and not self._stop.is_set():
                self._end(reason)

    def _end(self, reason: str) -> None:
        print(f"error: {reason}; ending rank {self.rank}", file=sys.stderr, flush=True)
        if self.on_peer_failure is not None:
            try:
                self.on_peer_failure(reason)
            except Exception as err:  # the process ends either way: a hung collective must not keep two GPUs
                print(f"warning: recording the failure failed: {err}", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_FAILED)
