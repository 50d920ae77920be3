"""The GPU memory estimate: the meta-device count equals a real CPU run's, scales as activations do, and the
presets state what it says."""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from deeplab.config import load_config
from deeplab.loss import build_loss
from deeplab.memory import _saved, card_warning, estimate_training_memory, saved_bytes
from deeplab.model import DeepLabV3Plus, model_kwargs

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs").glob("*.yaml"))
STATED = re.compile(r"^# GPU memory per GPU: ~(\d+\.\d) GB at (\d) ranks? \(deeplab.memory estimate", re.M)


class _LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created inside the mode and still alive, and their peak (each storage once)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and (key := t.untyped_storage()._cdata) not in self.sizes:
                self.sizes[key] = t.untyped_storage().nbytes()
                self.now += self.sizes[key]
                self.peak = max(self.peak, self.now)
                weakref.finalize(t.untyped_storage(), self._free, key)
        return out


def test_meta_counts_what_a_cpu_forward_saves_and_that_is_the_forwards_peak() -> None:
    cfg = load_config(REPO / "configs" / "cityscapes_r50_seed.yaml")  # OHEM, the seed's head switches
    torch.manual_seed(0)
    model = DeepLabV3Plus(**model_kwargs(cfg.model)).train()
    images, masks = torch.randn(1, 3, 64, 64), torch.randint(0, 19, (1, 64, 64))
    with _LiveBytes() as live:
        on_cpu = _saved(model, build_loss(cfg.loss), images, masks)
    meta = saved_bytes(cfg.model, cfg.loss, (64, 64), 1, half=False)[1:]
    # equal up to storages the CPU allocator recycled at one address while the graph was built (seen: 3 kB of 10 MB)
    assert meta[1] == on_cpu[1] and meta[0] == pytest.approx(on_cpu[0], rel=1e-3)
    saved, largest = on_cpu
    assert saved <= live.peak <= saved + 2 * largest  # what else the forward holds fits the transient allowance


def test_activations_grow_with_batch_and_crop_and_amp_halves_the_model_part() -> None:
    cfg = load_config(REPO / "configs" / "cityscapes_r101_clean.yaml")
    _, one, _ = saved_bytes(cfg.model, cfg.loss, (256, 256), 1, half=False)
    _, two, _ = saved_bytes(cfg.model, cfg.loss, (256, 256), 2, half=False)
    _, big, _ = saved_bytes(cfg.model, cfg.loss, (512, 512), 1, half=False)
    _, half, _ = saved_bytes(cfg.model, cfg.loss, (256, 256), 1, half=True)
    assert two == pytest.approx(2 * one, rel=0.01) and big == pytest.approx(4 * one, rel=0.02)
    assert 0.5 < half / one < 0.56  # the loss stays fp32, as train_step computes it


def test_states_count_weights_grads_momentum_and_ddp_buckets() -> None:
    cfg = load_config(REPO / "configs" / "synthetic_tiny.yaml")
    alone, ddp = estimate_training_memory(cfg, 1), estimate_training_memory(cfg, 2)
    assert alone.states == 12 * alone.params and ddp.states == 16 * ddp.params
    assert ddp.activations == alone.activations and ddp.allocated == ddp.states + ddp.activations + ddp.transient


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_each_preset_states_its_estimate(preset: Path) -> None:
    stated = STATED.search(preset.read_text())
    assert stated, f"{preset.name}: no '# GPU memory per GPU: ~N GB at R ranks (deeplab.memory estimate' line"
    estimate = estimate_training_memory(load_config(preset), int(stated.group(2)))
    assert f"{estimate.gb:.1f}" == stated.group(1)
    assert (card_warning(estimate) is None) == (estimate.gb <= 16)


def test_a_config_beyond_16_and_24_gb_is_said_so() -> None:
    cfg = load_config(REPO / "configs" / "cityscapes_r101_512x1024.yaml", ["data.batch_size_per_gpu=8"])
    estimate = estimate_training_memory(cfg, 2)
    assert card_warning(estimate) == f"needs ~{estimate.gb:.1f} GB per GPU, more than a 16 or 24 GB card holds"
