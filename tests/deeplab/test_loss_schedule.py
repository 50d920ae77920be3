"""OHEM against a direct implementation of its definition; warmup + poly values; SGD parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from deeplab.config import Config, OptimConfig, from_dict
from deeplab.loss import GlobalMeanCrossEntropy, OhemCrossEntropy
from deeplab.model import DeepLabV3Plus
from deeplab.schedule import build_optimizer, build_scheduler, poly_warmup_lr


def _ohem_by_definition(logits: torch.Tensor, target: torch.Tensor, thresh: float, divisor: int) -> torch.Tensor:
    """The seed's rule, written slowly: sort labelled pixels by loss; hard = p_true < thresh."""
    n_min = target.numel() // divisor
    losses = []
    for b in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                t = int(target[b, i, j])
                if t != 255:
                    p = F.softmax(logits[b, :, i, j].double(), 0)[t]
                    losses.append(-math.log(p))
    losses.sort(reverse=True)
    hard = [v for v in losses if v > -math.log(thresh)]
    kept = hard if len(hard) > n_min else losses[: max(n_min, 1)]
    return torch.tensor(sum(kept) / len(kept), dtype=torch.float64)


@pytest.mark.parametrize(("scale", "divisor"), [(0.3, 16), (3.0, 16), (3.0, 2), (0.01, 4)])
def test_ohem_matches_definition(scale: float, divisor: int) -> None:
    g = torch.Generator().manual_seed(int(scale * 100) + divisor)
    logits = torch.randn(2, 5, 6, 7, generator=g) * scale
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :2] = 255
    got = OhemCrossEntropy(thresh=0.7, min_kept_divisor=divisor)(logits, target)
    torch.testing.assert_close(got.double(), _ohem_by_definition(logits, target, 0.7, divisor), rtol=1e-5, atol=1e-6)


def test_ohem_all_void_batch_is_zero_with_a_graph() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = OhemCrossEntropy()(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None


def test_plain_ce_is_mean_over_labelled_pixels() -> None:
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    target[0, 0] = 255
    torch.testing.assert_close(
        GlobalMeanCrossEntropy()(logits, target), F.cross_entropy(logits, target, ignore_index=255)
    )


def test_schedule_values_at_known_iterations() -> None:
    kw = {"base_lr": 1e-2, "max_iter": 41000, "warmup_iters": 1000, "warmup_start_lr": 5e-6, "power": 0.9}
    assert poly_warmup_lr(0, warmup="exp", **kw) == pytest.approx(5e-6)
    assert poly_warmup_lr(500, warmup="exp", **kw) == pytest.approx(math.sqrt(5e-6 * 1e-2))  # geometric midpoint
    assert poly_warmup_lr(500, warmup="linear", **kw) == pytest.approx((5e-6 + 1e-2) / 2)
    assert poly_warmup_lr(1000, warmup="exp", **kw) == pytest.approx(1e-2)
    assert poly_warmup_lr(21000, warmup="exp", **kw) == pytest.approx(1e-2 * 0.5**0.9)
    assert poly_warmup_lr(41000, warmup="exp", **kw) == 0.0
    after = [poly_warmup_lr(i, warmup="exp", **kw) for i in range(1000, 41001, 500)]
    assert all(a > b for a, b in itertools.pairwise(after))
    assert poly_warmup_lr(0, warmup="none", **kw) == pytest.approx(1e-2)


def test_scheduler_follows_the_function_and_resumes() -> None:
    cfg: Config = from_dict({"train": {"iterations": 50}, "schedule": {"warmup_iters": 10}})
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    kw = {"base_lr": 1e-2, "max_iter": 50, "warmup_iters": 10, "warmup_start_lr": 5e-6, "warmup": "exp", "power": 0.9}
    assert lrs == pytest.approx([poly_warmup_lr(i, **kw) for i in range(20)])
    opt2 = build_optimizer(model, cfg.optim)
    sched2 = build_scheduler(opt2, cfg)
    opt2.load_state_dict(opt.state_dict())  # as the engine resumes: optimizer, then scheduler
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(poly_warmup_lr(20, **kw))


@pytest.mark.parametrize(("mode", "bn_exempt"), [("backbone", "backbone-only"), ("all", "all"), ("none", "none")])
def test_no_weight_decay_groups(mode: str, bn_exempt: str) -> None:
    model = DeepLabV3Plus(backbone="resnet50")
    opt = build_optimizer(model, OptimConfig(no_decay_bn=mode))
    exempt = {id(p) for p in opt.param_groups[1]["params"]}
    backbone_bn = {
        id(p)
        for n, m in model.named_modules()
        if n.startswith("backbone.") and isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    head_bn = {
        id(p)
        for n, m in model.named_modules()
        if not n.startswith("backbone.") and isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    assert opt.param_groups[1]["weight_decay"] == 0
    assert (backbone_bn <= exempt) == (bn_exempt != "none")
    assert (head_bn <= exempt) == (bn_exempt == "all")
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_ohem_lets_a_nan_through() -> None:
    """A diverged network must show as a NaN loss (the engine stops on it), not be masked out of the mean."""
    logits = torch.randn(1, 3, 4, 4)
    logits[0, :, 0, 0] = float("nan")
    loss = OhemCrossEntropy(thresh=0.7, min_kept_divisor=1)(logits, torch.randint(0, 3, (1, 4, 4)))
    assert torch.isnan(loss)
