"""GPU memory a training step needs, estimated on a machine without a GPU.

Method: the model's forward and loss run on torch's ``meta`` device at the config's real crop and per-GPU batch
(shapes only, no arithmetic: well under a second), and a saved-tensor hook adds up the bytes autograd keeps for
backward, each storage once, parameters aside. On CPU the same hook counts the same bytes (tested), so this is
the measured activation memory, not a model of it. On top come, per parameter: weights, gradients and SGD momentum
(4 bytes each, fp32), DDP's gradient buckets (4 bytes, world size > 1) and autocast's half-precision weight
copies (2 bytes, amp on). Gradients are alive during the forward pass, since the step zeroes them after it.
The step peaks at the end of the forward pass (on CPU, live tensor bytes of a whole res101 step at 128×256 ×2
came to this estimate within 1%; the test checks the forward part); backward's gradients in flight are allowed
for as twice the largest saved tensor. amp (bf16 or fp16) is measured by running the model in half precision
with the loss in fp32, as ``train_step`` does under CUDA autocast (convs, norms, activations and upsampling in
half). Validation needs less: no saved tensors (about 3 GiB of activations at 1.75 × 1024×2048, OS 8).

``allocated`` is what ``torch.cuda.max_memory_allocated`` should read (the GPU check measures it); ``gb`` is what
the card must have: allocated + 10% for the caching allocator's fragmentation + 1 GiB of CUDA context and
cuDNN/cuBLAS workspaces. Uncertainty: about ±25% (the workspace depends on the algorithms cuDNN picks; the
transient term is a rule of thumb).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deeplab.config import Config, LossConfig, ModelConfig
from deeplab.loss import build_loss
from deeplab.model import DeepLabV3Plus, model_kwargs

GIB = 2**30
CONTEXT_BYTES = GIB  # CUDA context, cuDNN and cuBLAS workspaces
FRAGMENTATION = 1.10
CARDS_GB = (16, 24)  # the GPUs people have: V100-16GB, T4, A4000 / RTX 3090, 4090, A10, L4


@dataclass(frozen=True)
class MemoryEstimate:
    params: int  # number of parameters
    states: int  # bytes: weights, gradients, momentum, DDP buckets, autocast weight copies
    activations: int  # bytes saved for backward at the crop and per-GPU batch
    transient: int  # bytes of gradients in flight during backward

    @property
    def allocated(self) -> int:
        return self.states + self.activations + self.transient

    @property
    def gb(self) -> float:
        """GiB a GPU must have for one rank of this config."""
        return (self.allocated * FRAGMENTATION + CONTEXT_BYTES) / GIB

    def fits(self, card_gb: float) -> bool:
        return self.gb <= card_gb


def estimate_training_memory(cfg: Config, world_size: int) -> MemoryEstimate:
    """Peak GPU memory of one rank training ``cfg`` with ``world_size`` ranks (see the module docstring)."""
    half = cfg.train.amp != "none"
    crop = tuple(cfg.data.crop_size)
    params, saved, largest = saved_bytes(cfg.model, cfg.loss, crop, cfg.data.batch_size_per_gpu, half)
    per_param = 4 * 3 + (4 if world_size > 1 else 0) + (2 if half else 0)
    return MemoryEstimate(params, params * per_param, saved, 2 * largest)


def saved_bytes(
    model_cfg: ModelConfig, loss_cfg: LossConfig, crop: tuple[int, int], batch: int, half: bool
) -> tuple[int, int, int]:
    """(parameters, bytes saved for backward, bytes of the largest saved tensor): one forward and loss on ``meta``,
    once per process for each model, loss, crop, batch and precision."""
    key = (repr(model_cfg), repr(loss_cfg), tuple(crop), batch, half)
    if key not in _CACHE:
        dtype = torch.bfloat16 if half else torch.float32
        with torch.device("meta"):
            model = DeepLabV3Plus(**model_kwargs(model_cfg)).to(dtype).train()
            images = torch.empty(batch, 3, *crop, dtype=dtype)
            masks = torch.zeros(batch, *crop, dtype=torch.long)
        params = sum(p.numel() for p in model.parameters())
        _CACHE[key] = (params, *_saved(model, build_loss(loss_cfg), images, masks))
    return _CACHE[key]


_CACHE: dict[tuple, tuple[int, int, int]] = {}  # a forward on meta takes about a second: plan and dry-run ask often


def _saved(model: torch.nn.Module, criterion: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> tuple:
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:  # one storage saved by several ops (in-place ReLU after BN) counts once
            sizes[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        criterion(model(images).float(), masks)
    return sum(sizes.values()), max(sizes.values(), default=0)


def card_warning(estimate: MemoryEstimate) -> str | None:
    """Which of the usual cards (16, 24 GB) this does not fit, said plainly; None when 16 GB suffice."""
    over = [card for card in CARDS_GB if not estimate.fits(card)]
    if not over:
        return None
    return f"needs ~{estimate.gb:.1f} GB per GPU, more than a {' or '.join(map(str, over))} GB card holds"
