"""The seed's recipe beside a config: each aspect, what the seed does, what the config does, whether they match.

The seed is CoinCheung/DeepLab-v3-plus-cityscapes at HEAD 5be4dee (its model, optimizer and data code are those
of the late-2019 commits; later commits changed only the evaluator and README). Where its Feb-2019 code (behind
the README's 80.12) or the konami86 res50 fork (behind the 78.398) differ, the seed column says so.
``deviations(cfg)`` returns the rows, ``deviations_markdown(cfg)`` a table; with ``deeplab.params.config_from_params``
the analysis prints the table of a run from its MLflow params, beside its results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeplab.config import Config, config_hash, load_config

SEED = "CoinCheung/DeepLab-v3-plus-cityscapes HEAD 5be4dee"
SEED_WEIGHT_FILES = ("resnet101-5d3b4d8f.pth", "resnet50-19c8e357.pth")  # torchvision's 2017 files


@dataclass(frozen=True)
class Deviation:
    aspect: str
    seed: str  # what the seed does
    this: str  # what the config does
    match: str  # "yes", "no", "cannot" (no flag can remove it), "unverified" or "axis" (the study's variable)
    remedy: str  # the setting that removes it, or why none does
    settings: dict[str, Any] = field(default_factory=dict)  # the remedy as config overrides (dotted keys)


@dataclass(frozen=True)
class _Aspect:
    name: str
    seed: str
    expected: dict[str, Any]  # dotted config key → the seed's value
    describe: Callable[[Config], str] | None = None  # default: the config's values of the expected keys


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, tuple) and isinstance(value, (list, tuple)):
        return tuple(value) == expected
    return value == expected


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _dilations(cfg: Config) -> str:
    m = cfg.model
    blocks = {"resnet50": (6, 3), "resnet101": (23, 3)}[m.backbone]
    stages = [("layer3", blocks[0], 2)] * (m.output_stride == 8) + [("layer4", blocks[1], 32 // m.output_stride)]
    first = (lambda d: d) if m.dilate_first_block else (lambda d: d // 2)  # torchvision: the previous dilation
    return "; ".join(f"{name} {first(d)}," + ",".join([str(d)] * (n - 1)) for name, n, d in stages)


def _decay(cfg: Config) -> str:
    o = cfg.optim
    exempt = {"none": "nothing", "backbone": "backbone BN", "all": "every BN"}[o.no_decay_bn]
    exempt = "the whole backbone" if o.no_decay_backbone else exempt
    return f"{o.weight_decay:g}; exempt: {exempt}" + (" and biases" if o.no_decay_bias else "")


def _reported(cfg: Config) -> str:
    t = cfg.train
    text = f"final model; val every {t.eval_every} its" if t.eval_every else "final model"
    return text + (" + best-of-N as val/mIoU_best_selected_on_val" if t.log_best_of_val else "")


_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
ASPECTS: tuple[_Aspect, ...] = (
    _Aspect("output stride", "16", {"model.output_stride": 16}),
    _Aspect(
        "dilated stage blocks", "layer4 2,2,2: every block dilated", {"model.dilate_first_block": True}, _dilations
    ),
    _Aspect("ASPP image pooling", "off (rates 6, 12, 18)", {"model.image_pooling": False}),
    _Aspect(
        "head conv bias",
        "before every ASPP/decoder norm, which cancels it (Feb-2019: none on the 3×3 atrous convs)",
        {"model.head_conv_bias": True},
    ),
    _Aspect("classifier bias", "none", {"model.classifier_bias": False}),
    _Aspect("ASPP 1×1 fuse padding", "1: the map grows by 2 pixels, a constant border", {"model.aspp_fuse_padding": 1}),
    _Aspect("bilinear align_corners", "true: decoder, final upsample, evaluation", {"model.align_corners": True}),
    _Aspect("new-layer init", "kaiming_normal_(a=1), fan_in: std 1/√fan_in", {"model.head_init": "fan_in_a1"}),
    _Aspect("head activation slope", "leaky ReLU 0.01 after every norm", {"model.head_leaky_slope": 0.01}),
    _Aspect(
        "backbone activation slope",
        "leaky ReLU 0.01 after the stem and each block's bn1/bn2; ReLU after the residual sum",
        {"model.backbone_leaky_slope": 0.01},
    ),
    _Aspect(
        "norm synchronisation",
        "every norm across GPUs (Feb-2019 and fork: bn3/downsample per-GPU BatchNorm2d)",
        {"model.sync_bn": True, "model.local_residual_bn": False},
        lambda c: "none" if not c.model.sync_bn else ("all but bn3/downsample" if c.model.local_residual_bn else "all"),
    ),
    _Aspect(
        "weight decay",
        "5e-4; exempt: backbone BN (Feb-2019: the whole backbone, a bug; fork: nothing)",
        {
            "optim.weight_decay": 5e-4,
            "optim.no_decay_bn": "backbone",
            "optim.no_decay_bias": False,
            "optim.no_decay_backbone": False,
        },
        _decay,
    ),
    _Aspect("SGD lr, momentum", "0.01, 0.9", {"optim.lr": 0.01, "optim.momentum": 0.9, "optim.nesterov": False}),
    _Aspect(
        "lr schedule",
        "exp warmup 1000 its from 5e-6, then poly 0.9",
        {
            "schedule.warmup": "exp",
            "schedule.warmup_iters": 1000,
            "schedule.warmup_start_lr": 5e-6,
            "schedule.power": 0.9,
        },
    ),
    _Aspect("iterations", "41000 (README: 40000; fork: 60000)", {"train.iterations": 41000}),
    _Aspect("images per GPU", "4 (× 2 GPUs)", {"data.batch_size_per_gpu": 4}),
    _Aspect(
        "crop, scales",
        "768×768; one of 0.5…2.0 per image; small images upscaled, not padded",
        {"data.crop_size": (768, 768), "data.scales": _SCALES, "data.pad_to_crop": False},
    ),
    _Aspect("flip, colour jitter", "p 0.5; 0.5, 0.5, 0.5", {"data.hflip": 0.5, "data.color_jitter": (0.5, 0.5, 0.5)}),
    _Aspect(
        "augmentation order",
        "jitter the whole frame → flip → resize the whole image → re-upscale if smaller than the crop → crop",
        {"data.augment_order": "seed"},
    ),
    _Aspect(
        "loss",
        "OHEM: true-class prob ≤ 0.7, at least B·H·W/16 pixels per GPU",
        {"loss.name": "ohem", "loss.ohem_thresh": 0.7, "loss.ohem_min_kept_divisor": 16},
    ),
    _Aspect("precision", "fp32", {"train.amp": "none"}, lambda c: "fp32" if c.train.amp == "none" else c.train.amp),
    _Aspect(
        "final evaluation",
        "whole image; scales 0.5…1.75 + flip, summed softmax (fork: 1.0, no flip)",
        {"eval.scales": _SCALES[:-1], "eval.flip": True},
    ),
    _Aspect(
        "reported figure",
        "the final model, evaluated once (fork: the best of ~141 per-epoch validations on val)",
        {},  # validating does not touch training; a best-of-N figure is logged under its own name
        _reported,
    ),
)

CANNOT_MATCH: tuple[Deviation, ...] = (
    Deviation(
        "normalisation kernel",
        "InPlaceABNSync: a compiled CUDA kernel fusing synchronised BN and leaky ReLU, scale |γ|+ε",
        "BatchNorm2d (SyncBatchNorm across ranks with model.sync_bn) + the activation above",
        "cannot",
        "the kernel needs nvcc at run time; same function up to |γ|+ε and rounding",
    ),
    Deviation(
        "PIL resampling",
        "PIL bilinear/nearest resize and ImageEnhance",
        "torchvision on uint8 tensors with PIL's conventions (antialiased bilinear, pixel-centre nearest)",
        "cannot",
        "bilinear and colour ops within 1 grey level; nearest differs at exact ties (PIL's fixed-point rounding)",
    ),
    Deviation(
        "random number streams",
        "no seed set anywhere: augmentation (Python random in workers) and head init from whatever torch starts"
        " with; data order from DistributedSampler's fixed seed 0",
        "every draw from train.seed through torch generators (exact resume)",
        "cannot",
        "other generators and draws: no run replays a seed run; compare distributions over seeds",
    ),
    Deviation(
        "GPU nondeterminism",
        "cuDNN/atomic-add kernels, run to run",
        "the same unless train.deterministic=true",
        "cannot",
        "bit-level differences grow over training; they are part of the seed-to-seed spread",
    ),
)


def deviations(cfg: Config) -> list[Deviation]:
    """One row per aspect of the seed's recipe (``match`` "yes", "no", "unverified" or "axis"), then what no
    flag can match (``match`` "cannot")."""
    backbone = Deviation("backbone", "ResNet-101 (fork: ResNet-50)", cfg.model.backbone, "axis", "")
    return [backbone, _weights_row(cfg)] + [_row(a, cfg) for a in ASPECTS] + list(CANNOT_MATCH)


def _row(a: _Aspect, cfg: Config) -> Deviation:
    wrong = {k: v for k, v in a.expected.items() if not _same(_get(cfg, k), v)}
    this = a.describe(cfg) if a.describe else "; ".join(_text(_get(cfg, k)) for k in a.expected)
    remedy = " ".join(f"{k}={_text(v)}" for k, v in wrong.items())
    return Deviation(a.name, a.seed, this, "no" if wrong else "yes", remedy, wrong)


def _weights_row(cfg: Config) -> Deviation:
    w = cfg.model.weights
    ok = Path(w).name in SEED_WEIGHT_FILES
    return Deviation(
        "pretrained weights",
        "torchvision's 2017 ImageNet files (resnet101-5d3b4d8f.pth; fork: resnet50-19c8e357.pth)",
        "torchvision IMAGENET1K_V1" if w == "imagenet" else w,
        "yes" if ok else "unverified",
        "" if ok else "model.weights=<path to the seed's file> (IMAGENET1K_V1 is a later file, not compared here)",
    )


def deviations_markdown(cfg: Config, title: str | None = None) -> str:
    """The deviations of ``cfg`` as a markdown table (a ``### title`` line first when given)."""
    head = [f"### {title}", ""] if title else []
    lines = [*head, "| aspect | seed | this config | match | to match |", "|---|---|---|---|---|"]
    for row in deviations(cfg):
        match = row.match if row.match in ("yes", "cannot", "axis") else f"**{row.match}**"
        cells = [row.aspect, row.seed, row.this, match, row.remedy]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def docs_markdown(config_dir: Path) -> str:
    """docs/deviations.md: the table of every Cityscapes preset in ``config_dir``."""
    order = {"seed": 0, "fork": 1, "clean": 2}
    presets = sorted(config_dir.glob("cityscapes_*.yaml"), key=lambda p: (order.get(p.stem.split("_")[-1], 3), p.name))
    parts = [
        "# Deviations from the seed's recipe",
        "",
        "Generated by `python -m deeplab deviations --docs docs/deviations.md` from `deeplab/fidelity.py`; do not "
        f"edit by hand. The seed is {SEED}; `to match` names the setting that removes a deviation. Rows marked "
        "`cannot` hold for every preset. The analysis gets the same table for a run with "
        "`deviations_markdown(deeplab.params.config_from_params(run.data.params))`.",
        "",
    ]
    for path in presets:
        cfg = load_config(path)
        parts.append(deviations_markdown(cfg, f"`configs/{path.name}` (config hash {config_hash(cfg)})"))
    return "\n".join(parts)
