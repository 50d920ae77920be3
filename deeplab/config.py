"""Run configuration: one dataclass tree loaded from YAML, overridden with ``--set``, validated once.

The resolved tree is the run's identity (``config_hash``) and is saved whole with every run and checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from deeplab.errors import DeeplabError
from deeplab.labels import IGNORE_INDEX, NUM_CLASSES
from deeplab.yaml_loader import describe_yaml_error, load_yaml_file, parse_yaml

#: Seeds numpy's legacy RNG and ``np.random.seed`` accept (torch takes more): every seed field is checked against it.
SEED_RANGE = range(2**32)
#: (height, width) bounds of a synthetic dataset: twice Cityscapes at most, so a typo cannot fill the memory.
SYNTH_SIZE_RANGE = ((32, 4096), (32, 8192))
# Upper bounds far beyond any recipe, so that a typo (an extra digit) is one line here, not tens of GB allocated
# by a worker or a GPU minutes later: a crop twice a Cityscapes frame, a scale that makes it 8× larger, ...
CROP_RANGE = (32, 4096)
MAX_SCALE, MAX_SCALES = 8.0, 32
MAX_BATCH = 256
MAX_WORKERS = 256
MAX_CHANNELS = 4096
MAX_SYNTH_IMAGES = 100_000


@dataclass
class SynthConfig:
    """A synthetic Cityscapes-layout dataset generated at ``data.root`` when it does not exist yet."""

    train: int = 32
    val: int = 8
    height: int = 128
    width: int = 256
    seed: int = 0


@dataclass
class DataConfig:
    root: str = "data/cityscapes"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: tuple[int, int] = (768, 768)  # (height, width)
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)  # one drawn per image
    pad_to_crop: bool = False  # seed: images smaller than the crop are upscaled, not padded
    # "window": resize only the crop window, then flip and jitter the crop (cheap); "seed": the seed's order,
    # jitter the whole frame, flip, resize the whole image, re-upscale it when smaller than the crop, then crop
    augment_order: Literal["window", "seed"] = "window"
    hflip: float = 0.5
    color_jitter: tuple[float, float, float] = (0.5, 0.5, 0.5)  # brightness, contrast, saturation
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    batch_size_per_gpu: int = 4
    num_workers: int = 4
    val_max_images: int = 0  # 0 = the whole split
    strict: bool = False  # check split sizes against the official 2975/500/1525
    synthetic: SynthConfig | None = None
    # a `deeplab data cache` folder of root's splits (decoded once, memory-mapped); "" reads the PNGs
    cache: str = ""


@dataclass
class ModelConfig:
    backbone: Literal["resnet50", "resnet101"] = "resnet101"
    output_stride: Literal[8, 16] = 16
    image_pooling: bool = False  # the seed has the ASPP image-pooling branch off
    weights: str = "imagenet"  # "none", "imagenet" (torchvision) or a path to a state_dict file
    num_classes: int = 19
    aspp_channels: int = 256
    low_level_channels: int = 48
    decoder_channels: int = 256
    sync_bn: bool = True  # world size > 1: torch's SyncBatchNorm on GPUs, deeplab.norm.CpuSyncBatchNorm on CPU
    # Seed-fidelity switches (docs/deviations.md); the defaults are this project's clean choices.
    align_corners: bool = False  # bilinear upsampling in the head and the evaluator (seed: true)
    dilate_first_block: bool = False  # dilate a dilated stage's first block too (seed: layer4 2,2,2; torchvision 1,2,2)
    head_conv_bias: bool = False  # bias on the ASPP/decoder convs before their norm (seed: true)
    classifier_bias: bool = True  # seed: false
    aspp_fuse_padding: int = 0  # the seed's 1×1 ASPP fuse conv keeps padding=1 (a 2-pixel larger map)
    head_init: Literal["fan_out_relu", "fan_in_a1"] = "fan_out_relu"  # seed: kaiming_normal_(a=1), fan_in
    head_leaky_slope: float = 0.0  # 0 = ReLU after each head norm (seed: leaky ReLU 0.01)
    backbone_leaky_slope: float = 0.0  # stem and bottleneck bn1/bn2 (seed: 0.01; the residual sum stays ReLU)
    local_residual_bn: bool = False  # bn3 and downsample norms per GPU even with sync_bn (Feb-2019 code, the fork)


@dataclass
class LossConfig:
    name: Literal["ohem", "ce"] = "ohem"
    ohem_thresh: float = 0.7  # keep pixels whose true-class probability is at most this
    ohem_min_kept_divisor: int = 16  # n_min = B*H*W / divisor
    ignore_index: int = 255


@dataclass
class OptimConfig:
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    no_decay_bn: Literal["none", "backbone", "all"] = "backbone"  # seed: backbone BN only
    no_decay_bias: bool = False
    no_decay_backbone: bool = False  # every backbone parameter exempt (the seed's Feb-2019 code, a bug)


@dataclass
class ScheduleConfig:
    warmup: Literal["exp", "linear", "none"] = "exp"
    warmup_iters: int = 1000
    warmup_start_lr: float = 5e-6
    power: float = 0.9


@dataclass
class TrainConfig:
    iterations: int = 41000
    seed: int = 0
    eval_every: int = 2000  # 0 = only at the end
    checkpoint_every: int = 1000
    log_every: int = 50
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # A finished run's checkpoint drops the optimizer state; with false it drops the weights too and only marks
    # the run finished (a few KB instead of 160-240 MB per run, for sweeps where only the curves matter).
    keep_weights: bool = True
    # Also log the best val/mIoU so far and its step (the seed fork's protocol): a figure selected on val itself.
    log_best_of_val: bool = False


@dataclass
class EvalConfig:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    per_image: bool = True  # keep per-image confusion matrices (the analysis bootstraps over images)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Fields that change how a run executes but not what it computes: left out of the run's identity.
NON_IDENTITY = frozenset(
    {"data.num_workers", "data.cache", "train.log_every", "train.checkpoint_every", "train.keep_weights"}
)

# Fields added after runs existed: hashed only when they differ from their default, so earlier runs (and their
# checkpoints) keep their identity. A new field that changes what a run computes belongs here.
HASHED_WHEN_SET = frozenset(
    {
        "data.augment_order",
        "model.align_corners",
        "model.dilate_first_block",
        "model.head_conv_bias",
        "model.classifier_bias",
        "model.aspp_fuse_padding",
        "model.head_init",
        "model.head_leaky_slope",
        "model.backbone_leaky_slope",
        "model.local_residual_bn",
        "optim.no_decay_backbone",
        "train.log_best_of_val",
    }
)


def _check(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise DeeplabError(f"config: {key} must be {expected}, got {value!r}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        _check(value in choices, key, "one of " + ", ".join(map(repr, choices)), value)
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        _check(isinstance(value, (list, tuple)), key, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), key, f"a list of {len(args)} values", value)
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        _check(isinstance(value, dict), key, "a mapping", value)
        return _from_dict(tp, value, key + ".")
    if tp is bool:
        _check(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)
        _check(math.isfinite(float(value)), key, "a finite number", value)  # also `.inf`, `1e999`, "nan"
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, "a string", value)
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise DeeplabError(f"config: unknown key {prefix}{key}{hint}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (what MLflow params and grids use)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise DeeplabError(f"config: cannot set {dotted}: {part} is not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.iterations=100"`` → ``("train.iterations", 100)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise DeeplabError(f"--set {text!r}: expected section.key=value")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise DeeplabError(f"--set {key}: value {raw!r}{describe_yaml_error(err)}") from None
    return key.strip(), value


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of an annotation such as ``SynthConfig | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _section(dotted: str) -> bool | None:
    """Whether the section ``dotted`` is optional (may be null); None when ``dotted`` names no section."""
    tp, optional = Config, False
    for part in dotted.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return None
        tp, optional = _unwrap(hints[part])
    return optional if dataclasses.is_dataclass(tp) else None


def _override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set one override. A section is never replaced wholesale: a mapping sets the keys it names (the others keep
    the base's values), and null or {} is refused, since it would silently reset every key to its default. An
    optional section (``data.synthetic``) may be null, which turns it off."""
    optional = _section(dotted)
    if optional is None or (value is None and optional) or not (value is None or isinstance(value, dict)):
        _set_dotted(data, dotted, value)  # a field, an unknown key, or a non-mapping (the type check names it)
        return
    if value is None or (not value and not optional):
        raise DeeplabError(
            f"config: {dotted}={'null' if value is None else '{}'} would reset every key of the {dotted} section "
            f"to its default; set the keys to change ({dotted}.KEY=VALUE)"
        )
    node = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:  # an optional section turned on: its defaults, then the keys given
        _set_dotted(data, dotted, {})
    for key, inner in value.items():
        _override(data, f"{dotted}.{key}", inner)


def from_dict(data: dict[str, Any], overrides: dict[str, Any] | None = None, *, check: bool = True) -> Config:
    """Build a Config from nested data plus dotted overrides: keys and types always checked, the rules across
    fields (``validate``) unless ``check`` is false."""
    data = json.loads(json.dumps(data or {}, default=str))  # a deep copy; YAML dates become strings
    for dotted, value in (overrides or {}).items():
        _override(data, dotted, value)
    cfg = _from_dict(Config, data)
    if check:
        validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a YAML config file; ``overrides`` are ``key=value`` strings or a dotted-key mapping."""
    path = Path(path)
    data = load_yaml_file(path, "config file")
    if data is not None and not isinstance(data, dict):
        raise DeeplabError(f"config file {path}: expected a mapping at the top level")
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    try:
        return from_dict(data or {}, overrides)
    except DeeplabError as err:
        raise DeeplabError(f"{path}: {err}") from None


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    d, t = cfg.data, cfg.train
    # smaller crops leave a 1x1 map at the backbone's stride 16, which BatchNorm cannot train on at batch 1
    lo, hi = CROP_RANGE
    _check(all(lo <= s <= hi for s in d.crop_size), "data.crop_size", f"{lo}..{hi} each", list(d.crop_size))
    scales_ok = 0 < len(d.scales) <= MAX_SCALES and all(0 < s <= MAX_SCALE for s in d.scales)
    _check(scales_ok, "data.scales", f"1 to {MAX_SCALES} numbers in (0, {MAX_SCALE:g}]", d.scales)
    _check(0.0 <= d.hflip <= 1.0, "data.hflip", "in [0, 1]", d.hflip)
    _check(all(0.0 <= j < 1.0 for j in d.color_jitter), "data.color_jitter", "each in [0, 1)", d.color_jitter)
    _check(all(s > 0 for s in d.std), "data.std", "positive", d.std)
    _check(1 <= d.batch_size_per_gpu <= MAX_BATCH, "data.batch_size_per_gpu", f"1..{MAX_BATCH}", d.batch_size_per_gpu)
    _check(0 <= d.num_workers <= MAX_WORKERS, "data.num_workers", f"0..{MAX_WORKERS}", d.num_workers)
    _check(d.val_max_images >= 0, "data.val_max_images", ">= 0", d.val_max_images)
    if d.synthetic is not None:
        s = d.synthetic
        count_ok = 1 <= s.train <= MAX_SYNTH_IMAGES and 1 <= s.val <= MAX_SYNTH_IMAGES
        _check(count_ok, "data.synthetic.train/val", f"1..{MAX_SYNTH_IMAGES} each", (s.train, s.val))
        (h_lo, h_hi), (w_lo, w_hi) = SYNTH_SIZE_RANGE
        size_ok = h_lo <= s.height <= h_hi and w_lo <= s.width <= w_hi
        _check(size_ok, "data.synthetic.height/width", f"in {h_lo}..{h_hi} x {w_lo}..{w_hi}", (s.height, s.width))
    m = cfg.model
    table = f"{NUM_CLASSES} (the evaluated train ids of cityscapesscripts' label table)"
    _check(m.num_classes == NUM_CLASSES, "model.num_classes", table, m.num_classes)
    void = f"{IGNORE_INDEX} (void in the masks)"
    _check(cfg.loss.ignore_index == IGNORE_INDEX, "loss.ignore_index", void, cfg.loss.ignore_index)
    for key in ("aspp_channels", "low_level_channels", "decoder_channels"):
        _check(1 <= getattr(m, key) <= MAX_CHANNELS, f"model.{key}", f"1..{MAX_CHANNELS}", getattr(m, key))
    _check(0.0 < cfg.loss.ohem_thresh <= 1.0, "loss.ohem_thresh", "in (0, 1]", cfg.loss.ohem_thresh)
    _check(cfg.loss.ohem_min_kept_divisor >= 1, "loss.ohem_min_kept_divisor", ">= 1", cfg.loss.ohem_min_kept_divisor)
    _check(cfg.optim.lr > 0, "optim.lr", "> 0", cfg.optim.lr)
    _check(0.0 <= cfg.optim.momentum < 1.0, "optim.momentum", "in [0, 1)", cfg.optim.momentum)
    _check(cfg.optim.weight_decay >= 0, "optim.weight_decay", ">= 0", cfg.optim.weight_decay)
    sc = cfg.schedule
    _check(sc.warmup_iters >= 0, "schedule.warmup_iters", ">= 0", sc.warmup_iters)
    _check(sc.warmup_start_lr > 0, "schedule.warmup_start_lr", "> 0", sc.warmup_start_lr)
    _check(sc.power > 0, "schedule.power", "> 0", sc.power)
    _check(t.iterations >= 1, "train.iterations", ">= 1", t.iterations)
    _check(sc.warmup_iters < t.iterations, "schedule.warmup_iters", "< train.iterations", sc.warmup_iters)
    for key in ("eval_every", "checkpoint_every"):
        _check(getattr(t, key) >= 0, f"train.{key}", ">= 0", getattr(t, key))
    _check(t.log_every >= 1, "train.log_every", ">= 1", t.log_every)
    seeds = {"train.seed": t.seed} | ({"data.synthetic.seed": d.synthetic.seed} if d.synthetic else {})
    for key, seed in seeds.items():
        _check(seed in SEED_RANGE, key, f"in 0..{SEED_RANGE[-1]} (what numpy's RNG takes)", seed)
    e = cfg.eval
    scales_ok = 0 < len(e.scales) <= MAX_SCALES and all(0 < s <= MAX_SCALE for s in e.scales)
    _check(scales_ok, "eval.scales", f"1 to {MAX_SCALES} numbers in (0, {MAX_SCALE:g}]", e.scales)
    _validate_fidelity(cfg)


def _validate_fidelity(cfg: Config) -> None:
    m = cfg.model
    _check(m.aspp_fuse_padding in (0, 1), "model.aspp_fuse_padding", "0 or 1", m.aspp_fuse_padding)
    for key in ("head_leaky_slope", "backbone_leaky_slope"):
        _check(0.0 <= getattr(m, key) < 1.0, f"model.{key}", "in [0, 1)", getattr(m, key))
    seed_order = cfg.data.augment_order == "seed"
    _check(not (seed_order and cfg.data.pad_to_crop), "data.pad_to_crop", "false with data.augment_order=seed", True)


def config_hash(cfg: Config) -> str:
    """12 hex digits identifying what a run computes (execution-only fields excluded, later fields at their
    default left out)."""
    defaults = _defaults()
    flat = {
        k: v
        for k, v in flatten(to_dict(cfg)).items()
        if k not in NON_IDENTITY and not (k in HASHED_WHEN_SET and v == defaults[k])
    }
    blob = json.dumps(flat, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@functools.cache
def _defaults() -> dict[str, Any]:
    return flatten(to_dict(Config()))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
