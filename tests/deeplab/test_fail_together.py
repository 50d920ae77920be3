"""Ranks fail together, quickly: a failure on either of 2 gloo ranks ends the other within seconds, with the
failing rank's one-line reason, whether the failing process exits (its peer's collective breaks) or stays alive
as a NCCL rank would (nothing breaks: the failure watch must end the peer). A checkpoint rank 0 cannot write is
agreed on by both ranks."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from deeplab.distributed import EXIT_PEER_FAILED, POLL_S
from deeplab.engine import train
from deeplab.errors import DeeplabError

BOUND_S = (
    10 * POLL_S + 20
)  # the stated bound (POLL_S, plus the peer's wait for the reason) with a loaded machine's slack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, data: str, run_dir: str, out: str, fail_rank: int, mode: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    cfg = tiny_config(Path(data), **{"train.iterations": 40, "train.eval_every": 0, "train.checkpoint_every": 4})
    out_dir = Path(out)

    def on_iteration(i: int) -> None:
        if rank == fail_rank and i == 3:
            if mode == "checkpoint":  # rank 0's write at iteration 4 fails: its path is a directory
                (Path(run_dir) / "checkpoint.pt").mkdir()
            else:
                raise DeeplabError(f"injected failure on rank {rank}")

    def peer_failed(reason: str) -> None:
        (out_dir / f"peer-{rank}.txt").write_text(reason)

    try:
        train(cfg, Path(run_dir), None, on_iteration=on_iteration, on_peer_failure=peer_failed, progress="lines")
    except Exception as err:
        (out_dir / f"raised-{rank}.txt").write_text(f"{err.__class__.__name__}: {err}")
        if mode == "hangs" and rank == fail_rank:
            time.sleep(300)  # as a rank whose NCCL teardown hangs: its peer must not wait for it
        raise SystemExit(2) from None
    (out_dir / f"finished-{rank}.txt").write_text("")


@pytest.mark.parametrize(
    ("fail_rank", "mode"), [(0, "hangs"), (1, "hangs"), (1, "exits"), (0, "checkpoint")], ids=lambda v: str(v)
)
def test_a_failure_on_one_rank_ends_the_other_with_its_reason(
    tiny_data: Path, tmp_path: Path, fail_rank: int, mode: str
) -> None:
    ctx = multiprocessing.get_context("spawn")
    port, run_dir = _free_port(), tmp_path / "run"
    args = (port, str(tiny_data), str(run_dir), str(tmp_path), fail_rank, mode)
    ranks = [ctx.Process(target=_rank, args=(r, *args)) for r in (0, 1)]
    for p in ranks:
        p.start()
    other = 1 - fail_rank
    try:
        ranks[other].join(timeout=300)
        assert ranks[other].exitcode is not None, "the other rank still waits"
        if mode != "hangs":  # both end; the failing one may still be writing what it raised
            ranks[fail_rank].join(timeout=120)
        failed_at = (tmp_path / f"raised-{fail_rank}.txt").stat().st_mtime
        waited = (
            (tmp_path / f"raised-{other}.txt").stat().st_mtime
            if (tmp_path / f"raised-{other}.txt").exists()
            else time.time()
        )
        assert waited - failed_at < BOUND_S, (
            f"rank {other} ended {waited - failed_at:.0f} s after rank {fail_rank} failed"
        )
    finally:
        for p in ranks:
            p.kill()
            p.join()
    reasons = {p.name: p.read_text() for p in tmp_path.glob("*.txt")}
    if mode == "checkpoint":
        assert "checkpoint" in reasons["raised-0.txt"] and "directory" in reasons["raised-0.txt"].lower(), reasons
        assert reasons["raised-1.txt"] == "PeerFailed: rank 0 could not write the checkpoint of iteration 4", reasons
        return
    assert reasons[f"raised-{fail_rank}.txt"] == f"DeeplabError: injected failure on rank {fail_rank}"
    expected = f"rank {fail_rank} failed: injected failure on rank {fail_rank}"
    if mode == "hangs":  # the peer sat in a collective that never breaks: the watch ended it with the reason
        assert ranks[other].exitcode == EXIT_PEER_FAILED, reasons
        assert reasons[f"peer-{other}.txt"] == expected
    elif ranks[other].exitcode == 2:  # the failing process exited first: the peer's collective broke, and the
        assert reasons[f"raised-{other}.txt"] == f"PeerFailed: {expected}"  # peer names the cause, not the echo
    else:  # the watch saw the published reason before the collective broke
        assert ranks[other].exitcode == EXIT_PEER_FAILED and reasons[f"peer-{other}.txt"] == expected, reasons
