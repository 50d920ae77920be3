"""One training process per run directory: a second trainer refuses in one line naming the holder; a dead holder
(this host) or a stale one (another host) gives way; where flock is node-local or missing, the record decides."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from tiny import REPO, TINY, tiny_config, tiny_overrides

from deeplab import lease
from deeplab.checkpoint import CHECKPOINT_NAME, load_checkpoint
from deeplab.engine import train
from deeplab.errors import DeeplabError
from deeplab.lease import LEASE_NAME, Holder, LeaseHeld, acquire, current_holder, hold_run_dir
from deeplab.tracking import JsonlTracker

HOLD = "import sys, time; from deeplab.lease import hold_run_dir; hold_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(600)"


def _holder(run_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    """Another process that holds the run directory's lease until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], env={**os.environ, **env}, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _record(run_dir: Path, holder: Holder, age_s: float = 0.0) -> None:
    """A lease file as another node's holder leaves it (its flock is on that node: here only the record exists)."""
    path = run_dir / LEASE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(holder.to_json())
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_a_second_trainer_refuses_in_one_line_naming_the_holder_and_writes_nothing(
    tiny_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    holder = _holder(run_dir, {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"})
    try:
        cmd = [sys.executable, "-m", "deeplab", "train", str(TINY), "--run-dir", str(run_dir)]
        cmd += [
            arg
            for o in tiny_overrides(tiny_data, **{"train.iterations": 1, "schedule.warmup_iters": 0})
            for arg in ("--set", o)
        ]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith(f"error: run dir {run_dir} is held by slurm job 4240_2 (") and " since " in lines[0]
        assert f":{holder.pid})" in lines[0]
        assert sorted(p.name for p in run_dir.iterdir()) == [LEASE_NAME]  # no config, no metrics, no checkpoint
        assert current_holder(run_dir / LEASE_NAME).pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)  # a holder that dies without releasing: its record stays behind
        holder.wait()
    assert json.loads((run_dir / LEASE_NAME).read_text())["pid"] == holder.pid
    assert current_holder(run_dir / LEASE_NAME) is None  # dead pid on this host
    with hold_run_dir(run_dir) as held:
        assert held.holder.pid == os.getpid()
    assert not (run_dir / LEASE_NAME).exists()


def test_a_run_dir_made_for_the_lease_is_removed_when_nothing_else_was_written(tmp_path: Path) -> None:
    run_dir = tmp_path / "a" / "run"
    refusal = f"run dir {run_dir} is held by .*:{os.getpid()} since"
    with hold_run_dir(run_dir), pytest.raises(LeaseHeld, match=refusal):
        hold_run_dir(run_dir)  # the same process twice: flock tells the two holds apart
    assert not run_dir.exists()


def test_a_holder_on_another_node_is_respected_until_its_heartbeat_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = Holder("node-b", "other-boot", 31337, 99, "77_1", "78", time.time())
    _record(tmp_path, elsewhere, age_s=lease.STALE_S / 2)
    with pytest.raises(LeaseHeld, match=r"is held by slurm job 77_1 \(node-b:31337\)"):
        hold_run_dir(tmp_path)
    _record(tmp_path, elsewhere, age_s=lease.STALE_S + 1)  # four heartbeats missed: that node is gone
    hold_run_dir(tmp_path).release()
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # an earlier attempt of this very job (requeued): it is over
    _record(tmp_path, elsewhere)
    hold_run_dir(tmp_path).release()


def test_a_held_lease_keeps_its_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    with hold_run_dir(tmp_path):
        path = tmp_path / LEASE_NAME
        os.utime(path, (0, 0))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5


def test_without_flock_the_record_alone_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(fd: int, op: int) -> None:  # a stand-in for Lustre's noflock mount, which cannot exist here
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lease.fcntl, "flock", no_flock)
    first = hold_run_dir(tmp_path)
    with pytest.raises(LeaseHeld, match=f":{os.getpid()} since"):
        hold_run_dir(tmp_path)
    first.release()
    hold_run_dir(tmp_path).release()


def test_on_a_network_filesystem_an_overwritten_record_loses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = Holder("node-c", "boot-c", 4, 5, "", "", time.time())

    def another_node_writes(_seconds: float) -> None:  # its write lands while we wait to read ours back
        (tmp_path / LEASE_NAME).write_text(other.to_json())

    monkeypatch.setattr(lease, "_on_local_fs", lambda path: False)
    monkeypatch.setattr(lease.time, "sleep", another_node_writes)
    with pytest.raises(LeaseHeld, match=r"node-c:4"):
        acquire(tmp_path / LEASE_NAME, "run dir")


def _ddp_rank(rank: int, port: int, data: str, run_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    try:
        train(tiny_config(Path(data), **{"train.iterations": 1, "schedule.warmup_iters": 0}), Path(run_dir))
        Path(f"{out}.{rank}").write_text("trained")
    except LeaseHeld as err:
        Path(f"{out}.{rank}").write_text(f"refused: {err}")


def test_every_ddp_rank_refuses_when_rank_0_cannot_take_the_lease(tiny_data: Path, tmp_path: Path) -> None:
    from test_engine_ddp import _free_port

    run_dir = tmp_path / "run"
    holder = _holder(run_dir, {})
    try:
        started = time.monotonic()
        args = (_free_port(), str(tiny_data), str(run_dir), str(tmp_path / "out"))
        mp.start_processes(_ddp_rank, args=args, nprocs=2, start_method="fork")  # forked: no imports to repeat
        seconds = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    rank0, rank1 = ((tmp_path / f"out.{r}").read_text() for r in (0, 1))
    assert rank0.startswith(f"refused: run dir {run_dir} is held by ") and f":{holder.pid} since" in rank0
    assert rank1 == f"refused: run dir {run_dir}: rank 0 could not take its lease"
    print(f"both ranks refused in {seconds:.1f} s")  # not waiting for a collective's 30-minute timeout


def test_a_removed_lease_file_lets_no_one_in_and_the_holder_writes_its_record_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    path = tmp_path / LEASE_NAME
    with hold_run_dir(tmp_path):
        path.unlink()  # a user's `rm`, or a cleanup script
        with pytest.raises(LeaseHeld, match=f"run dir {tmp_path} is held by"):
            acquire(path, "run dir")  # the directory's flock still holds
        deadline = time.monotonic() + 10
        while current_holder(path) is None:
            assert time.monotonic() < deadline, "the holder never wrote its record back"
            time.sleep(0.05)
        assert current_holder(path).pid == os.getpid()
    assert not path.exists()
    acquire(path, "run dir").release()  # released: free again


def test_a_moved_run_dir_is_noticed_before_anything_is_written_into_what_replaced_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    held = hold_run_dir(run_dir)
    held.check()
    run_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(DeeplabError, match=rf"^run dir: {run_dir} was moved or removed while this process held it"):
        held.check()
    run_dir.mkdir()
    with pytest.raises(DeeplabError, match="was replaced by another directory"):
        held.check()
    held.release()


def test_nothing_in_a_run_dir_is_followed_out_of_it_through_a_symlink(tmp_path: Path) -> None:
    precious = tmp_path / "dotfile"
    precious.write_text("keep me\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LEASE_NAME).symlink_to(precious)
    with pytest.raises(DeeplabError, match="cannot create it \\(a symlink, never followed\\)"):
        hold_run_dir(run_dir)
    (run_dir / LEASE_NAME).unlink()
    (run_dir / "metrics.jsonl").symlink_to(precious)
    with pytest.raises(DeeplabError, match="metrics.jsonl is a symlink"):
        tracker = JsonlTracker(run_dir)
        tracker.log_metrics({"train/loss": 1.0}, 1)
        tracker.flush()
    (run_dir / CHECKPOINT_NAME).symlink_to(precious)
    with pytest.raises(DeeplabError, match="checkpoint.pt is a symlink"):
        load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert precious.read_text() == "keep me\n"


def test_a_trainer_whose_run_dir_is_moved_stops_at_its_next_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_config(tiny_data, **{"train.checkpoint_every": 3})

    def move(iteration: int) -> None:
        if iteration == 2:
            run_dir.rename(tmp_path / "moved")
            run_dir.mkdir()  # e.g. a new trainer's directory at the old path

    with pytest.raises(DeeplabError, match=rf"run dir: {run_dir} was replaced by another directory"):
        train(cfg, run_dir, on_iteration=move)
    assert list(run_dir.iterdir()) == []  # nothing written into the directory that took its place
