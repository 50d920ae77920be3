"""The trajectory record: a resume that would change it is refused in one line, or accepted by name and recorded;
checkpoints older than the record resume as unknown. RNG states restore per local device."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplab import checkpoint, trajectory
from deeplab.errors import DeeplabError

RAN = {
    "world_size": 2,
    "batch_per_gpu": 2,
    "global_batch": 4,
    "device": "cuda",
    "amp": "bf16",
    "grad_scaler": False,
    "sync_bn": True,
    "train_images": 2975,
    "train_files": "0123456789ab",
}
ENV = {"torch": "2.11.0", "cuda": "12.8", "gpu": "NVIDIA H100"}
PATH = Path("runs/x/checkpoint.pt")


def _state(record: dict | None = RAN, **extra: object) -> dict:
    history = [trajectory.history_entry(0, record, None)] if record else None
    return {"iteration": 400, "trajectory": record, "history": history, "environment": ENV, **extra}


def test_the_same_trajectory_resumes_silently() -> None:
    assert trajectory.on_resume(PATH, _state(), dict(RAN), ENV) == (None, {}, None)


def test_another_world_size_is_refused_in_one_line_naming_old_new_and_the_ways_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(trajectory.ACCEPT_ENV, raising=False)
    now = RAN | {"world_size": 1, "global_batch": 2, "sync_bn": False}
    with pytest.raises(DeeplabError) as err:
        trajectory.on_resume(PATH, _state(), now, ENV)
    assert str(err.value) == (
        "runs/x/checkpoint.pt: resuming at iteration 400 would change the run's trajectory: world_size 2 → 1, "
        "global_batch 4 → 2, sync_bn true → false; resume as it ran (2 ranks × 2 images on cuda, amp bf16), or set "
        "DEEPLAB_RESUME_ACCEPT=world_size,global_batch,sync_bn to continue anyway (recorded in the checkpoint and "
        "the run's tags), or use another --run-dir"
    )


@pytest.mark.parametrize(
    ("now", "named"),
    [
        ({"device": "cpu"}, "device cuda → cpu"),
        ({"amp": "none"}, "amp bf16 → none"),
        ({"amp": "fp16", "grad_scaler": True}, "amp bf16 → fp16, grad_scaler false → true"),
        ({"batch_per_gpu": 4, "global_batch": 8}, "batch_per_gpu 2 → 4, global_batch 4 → 8"),
        ({"train_images": 2900, "train_files": "ffffffffffff"}, "train_images 2975 → 2900"),
    ],
)
def test_each_recorded_key_is_checked(monkeypatch: pytest.MonkeyPatch, now: dict, named: str) -> None:
    monkeypatch.delenv(trajectory.ACCEPT_ENV, raising=False)
    with pytest.raises(DeeplabError, match=named):
        trajectory.on_resume(PATH, _state(), RAN | now, ENV)


def test_an_accepted_change_is_recorded_in_the_history_and_the_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trajectory.ACCEPT_ENV, "world_size,global_batch")
    now = RAN | {"world_size": 4, "global_batch": 8}
    history, tags, note = trajectory.on_resume(PATH, _state(), now, ENV)
    accepted = "world_size 2 → 4, global_batch 4 → 8 (accepted by DEEPLAB_RESUME_ACCEPT)"
    assert history == [trajectory.history_entry(0, RAN, None), trajectory.history_entry(400, now, accepted)]
    assert tags == {"resume.accepted": f"it 400: {accepted}"}
    assert note == f"resuming at iteration 400 with a changed trajectory: {accepted}"


def test_acceptance_covers_only_the_named_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trajectory.ACCEPT_ENV, "world_size")
    with pytest.raises(DeeplabError, match="set DEEPLAB_RESUME_ACCEPT=world_size,global_batch to"):
        trajectory.on_resume(PATH, _state(), RAN | {"world_size": 4, "global_batch": 8}, ENV)
    monkeypatch.setenv(trajectory.ACCEPT_ENV, "all")
    assert trajectory.on_resume(PATH, _state(), RAN | {"device": "cpu"}, ENV)[0] is not None


def test_an_unknown_key_in_the_opt_in_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trajectory.ACCEPT_ENV, "world_size,gpus")
    with pytest.raises(DeeplabError, match=r"DEEPLAB_RESUME_ACCEPT='world_size,gpus': unknown key 'gpus' \(known: all"):
        trajectory.on_resume(PATH, _state(), RAN | {"world_size": 4}, ENV)


def test_a_checkpoint_older_than_the_record_resumes_as_unknown_once() -> None:
    old = {"iteration": 400}  # what checkpoints held before: no trajectory, history nor environment
    history, tags, note = trajectory.on_resume(PATH, old, RAN, ENV)
    assert history == [trajectory.history_entry(0, None, None), trajectory.history_entry(400, RAN, None)]
    assert tags == {"resume.trajectory_unknown_before": "400"}
    assert note.startswith("written before checkpoints recorded the trajectory: unknown before iteration 400; now ")
    again = {"iteration": 900, "trajectory": RAN, "history": history, "environment": ENV}  # its next checkpoint
    assert trajectory.on_resume(PATH, again, RAN, ENV) == (None, {}, None)


def test_another_gpu_or_torch_is_told_not_refused() -> None:
    moved = ENV | {"gpu": "NVIDIA A100-SXM4-40GB"}
    assert trajectory.on_resume(PATH, _state(), RAN, moved) == (
        None,
        {},
        "resuming on gpu NVIDIA H100 → NVIDIA A100-SXM4-40GB (rounding may differ, the recipe does not)",
    )


def test_rng_state_round_trips_on_cpu() -> None:
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = checkpoint.rng_state()
    expected = (torch.rand(2), np.random.rand(), random.random())
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(2), expected[0]) and (np.random.rand(), random.random()) == expected[1:]


class _FakeCuda:
    """Stands in for torch.cuda where no GPU can exist (the test is skipped when one does): device 1 of 2."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, current: int = 1) -> None:
        self.restored: list[tuple[torch.Tensor, int]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), device, dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: self.restored.append((s, device)))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self._never)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self._never)

    @staticmethod
    def _never(*_: object) -> None:
        raise AssertionError("every device's RNG state was touched; only the current one may be")


def _cpu_states() -> dict:
    return {k: v for k, v in checkpoint.rng_state().items() if k in ("torch", "numpy", "python")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="mocks CUDA; the GPU variant below runs instead")
def test_only_the_current_devices_cuda_state_is_saved_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _FakeCuda(monkeypatch, current=1)
    state = checkpoint.rng_state()
    assert "cuda" not in state and state["cuda_device"].tolist() == [1, 1, 1, 1]
    checkpoint.set_rng_state(state)
    assert [(s.tolist(), d) for s, d in cuda.restored] == [([1, 1, 1, 1], 1)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="mocks CUDA; the GPU variant below runs instead")
@pytest.mark.parametrize("saved_devices", [8, 2, 1, 0], ids=["more", "as many", "fewer", "none"])
def test_an_old_checkpoints_list_of_every_devices_state_restores_what_fits(
    monkeypatch: pytest.MonkeyPatch, saved_devices: int
) -> None:
    cuda = _FakeCuda(monkeypatch, current=1)
    states = [torch.full((4,), 10 + i, dtype=torch.uint8) for i in range(saved_devices)]
    checkpoint.set_rng_state(_cpu_states() | {"cuda": states})  # written by get_rng_state_all() on another node
    assert [(s.tolist(), d) for s, d in cuda.restored] == ([([11] * 4, 1)] if saved_devices > 1 else [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("extra", [3, -1], ids=["longer list", "shorter list"])
def test_on_a_gpu_an_old_list_longer_or_shorter_than_the_devices_restores(extra: int) -> None:
    device = torch.cuda.current_device()
    count = max(0, torch.cuda.device_count() + extra) if extra > 0 else device
    states = [torch.cuda.get_rng_state(device)] * count
    checkpoint.set_rng_state(_cpu_states() | {"cuda": states})
    checkpoint.set_rng_state(checkpoint.rng_state())
