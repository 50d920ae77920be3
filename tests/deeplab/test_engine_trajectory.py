"""A run stopped on 2 gloo ranks and resumed on 1 is refused in one line; with the opt-in it resumes and says so in
its checkpoint's history and its tags. A checkpoint older than the record resumes as unknown."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tiny import tiny_config

from deeplab.checkpoint import load_checkpoint, save_checkpoint
from deeplab.distributed import cleanup
from deeplab.engine import StopFlag, train
from deeplab.errors import DeeplabError
from deeplab.tracking import JsonlTracker
from deeplab.trajectory import ACCEPT_ENV, history_entry

pytestmark = pytest.mark.slow  # 2 gloo ranks and three train() calls: ~1 min on 2 loaded cores
SETTINGS = {"train.iterations": 2, "train.eval_every": 0, "train.checkpoint_every": 0, "schedule.warmup_iters": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_at_one(rank: int, port: int, data_root: str, run_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    flag = StopFlag()
    try:
        result = train(tiny_config(Path(data_root), **SETTINGS), Path(run_dir), stop=flag,
                       on_iteration=lambda it: flag.request() if it == 1 else None)  # fmt: skip
        assert result.status == "interrupted"
    finally:
        cleanup()


@pytest.fixture(scope="module")
def two_rank_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_stop_at_one, args=(_free_port(), str(tiny_data), str(run_dir)), nprocs=2, join=True)
    return run_dir


def test_two_ranks_resumed_on_one_is_refused_then_accepted_and_recorded(
    two_rank_checkpoint: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    shutil.copytree(two_rank_checkpoint, tmp_path, dirs_exist_ok=True)
    ckpt = tmp_path / "checkpoint.pt"
    ran = load_checkpoint(ckpt)["trajectory"]
    assert ran == {"world_size": 2, "batch_per_gpu": 2, "global_batch": 4, "device": "cpu", "amp": "none",
                   "grad_scaler": False, "sync_bn": True, "train_images": 8, "train_files": ran["train_files"]}  # fmt: skip
    monkeypatch.delenv(ACCEPT_ENV, raising=False)
    before = ckpt.stat().st_mtime_ns
    cfg = tiny_config(tiny_data, **SETTINGS)
    with pytest.raises(DeeplabError) as err:
        train(cfg, tmp_path)
    assert str(err.value) == (
        f"{ckpt}: resuming at iteration 1 would change the run's trajectory: world_size 2 → 1, global_batch 4 → 2, "
        "sync_bn true → false; resume as it ran (2 ranks × 2 images on cpu, amp none), or set "
        "DEEPLAB_RESUME_ACCEPT=world_size,global_batch,sync_bn to continue anyway (recorded in the checkpoint and "
        "the run's tags), or use another --run-dir"
    )
    assert ckpt.stat().st_mtime_ns == before  # refused: nothing written

    monkeypatch.setenv(ACCEPT_ENV, "world_size,global_batch,sync_bn")
    capsys.readouterr()
    tracker = JsonlTracker(tmp_path)
    assert train(cfg, tmp_path, tracker).status == "finished"
    tracker.close("FINISHED")
    accepted = "world_size 2 → 1, global_batch 4 → 2, sync_bn true → false (accepted by DEEPLAB_RESUME_ACCEPT)"
    assert f"{ckpt}: resuming at iteration 1 with a changed trajectory: {accepted}" in capsys.readouterr().out
    final = load_checkpoint(ckpt)
    assert final["history"] == [history_entry(0, ran, None), history_entry(1, final["trajectory"], accepted)]
    assert json.loads((tmp_path / "tags.json").read_text())["resume.accepted"] == f"it 1: {accepted}"


def test_a_checkpoint_older_than_the_record_resumes_saying_so_once(
    two_rank_checkpoint: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    state = load_checkpoint(two_rank_checkpoint / "checkpoint.pt")
    for key in ("trajectory", "history", "environment"):
        del state[key]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    monkeypatch.delenv(ACCEPT_ENV, raising=False)
    tracker = JsonlTracker(tmp_path)
    assert train(tiny_config(tiny_data, **SETTINGS), tmp_path, tracker).status == "finished"
    tracker.close("FINISHED")
    out = capsys.readouterr().out
    assert out.count("written before checkpoints recorded the trajectory: unknown before iteration 1; now ") == 1
    history = load_checkpoint(tmp_path / "checkpoint.pt")["history"]
    assert [(h["from_iteration"], h["trajectory"] is None) for h in history] == [(0, True), (1, False)]
    assert json.loads((tmp_path / "tags.json").read_text())["resume.trajectory_unknown_before"] == "1"
