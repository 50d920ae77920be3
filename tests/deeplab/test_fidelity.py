"""Seed fidelity beyond the model: config identity, decay groups, augmentation order, best-of-val, the table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tiny import REPO, tiny_config

from deeplab.config import HASHED_WHEN_SET, Config, DataConfig, config_hash, flatten, from_dict, load_config, to_dict
from deeplab.data.transforms import TrainTransform
from deeplab.engine import train
from deeplab.errors import DeeplabError
from deeplab.fidelity import deviations, deviations_markdown, docs_markdown
from deeplab.model import DeepLabV3Plus
from deeplab.params import config_from_params
from deeplab.schedule import build_optimizer
from deeplab.tracking import VAL_MIOU, VAL_MIOU_BEST, VAL_MIOU_BEST_N, VAL_MIOU_BEST_STEP, JsonlTracker
from deeplab.validation import best_of_val

CONFIGS = REPO / "configs"
# config_hash of the presets before the fidelity flags existed (main at 906ea73): their runs keep their identity
HASHES_BEFORE = {
    "cityscapes_r50_clean.yaml": "bacd94080678",  # was cityscapes_r50_seed.yaml
    "cityscapes_r101_clean.yaml": "c46f96c25eb7",  # was cityscapes_r101_seed.yaml
    "cityscapes_r50_512x1024.yaml": "567b08254a04",
    "cityscapes_r101_512x1024.yaml": "63465536ad2f",
    "synthetic_tiny.yaml": "01541eb9b0cc",
}


def test_existing_runs_keep_their_config_hash() -> None:
    for name, before in HASHES_BEFORE.items():
        assert config_hash(load_config(CONFIGS / name)) == before, name
    assert config_hash(Config()) == "f73826f77dcd"
    defaults = flatten(to_dict(Config()))
    assert set(defaults) >= HASHED_WHEN_SET
    for key in sorted(HASHED_WHEN_SET):  # each new key enters the hash once it leaves its default
        value = {bool: lambda v: not v, float: lambda v: 0.5, int: lambda v: 1}.get(type(defaults[key]))
        other = value(defaults[key]) if value else {"data.augment_order": "seed", "model.head_init": "fan_in_a1"}[key]
        assert config_hash(from_dict({}, {key: other})) != config_hash(Config()), key


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"model.head_leaky_slope": 1.0}, "model.head_leaky_slope must be in [0, 1)"),
        ({"model.backbone_leaky_slope": -0.1}, "model.backbone_leaky_slope must be in [0, 1)"),
        ({"model.aspp_fuse_padding": 2}, "model.aspp_fuse_padding must be 0 or 1"),
        ({"model.aspp_fuse_padding": True}, "model.aspp_fuse_padding must be an integer"),
        ({"model.head_init": "xavier"}, "model.head_init must be one of"),
        ({"data.augment_order": "pil"}, "data.augment_order must be one of"),
        ({"data.augment_order": "seed", "data.pad_to_crop": True}, "data.pad_to_crop must be false with"),
    ],
)
def test_bad_fidelity_values_name_the_field(overrides: dict, needle: str) -> None:
    with pytest.raises(DeeplabError, match=None) as err:
        from_dict({}, overrides)
    assert needle in str(err.value)


def _seed_no_decay(name: str, version: str) -> bool:
    """The seed's rule by parameter name: get_params() of models/resnet.py and optimizer.py of each version."""
    in_backbone = name.startswith("backbone.")
    if version == "head":  # 'bn' in name or 'downsample.1' in name → weight_decay 0
        return in_backbone and ("bn" in name.removeprefix("backbone.") or "downsample.1" in name)
    if version == "feb2019":  # get_params appended every backbone parameter to the bn group
        return in_backbone
    return False  # the fork: both groups kept the default weight decay


@pytest.mark.parametrize(
    ("version", "optim"),
    [
        ("head", {"no_decay_bn": "backbone"}),
        ("feb2019", {"no_decay_bn": "backbone", "no_decay_backbone": True}),
        ("fork", {"no_decay_bn": "none"}),
    ],
)
def test_weight_decay_groups_of_each_seed_version(version: str, optim: dict) -> None:
    model = DeepLabV3Plus(backbone="resnet50", head_conv_bias=True, classifier_bias=False)
    opt = build_optimizer(model, from_dict({"optim": optim}).optim)
    exempt = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    names = dict(model.named_parameters())
    assert {n for n, p in names.items() if id(p) in exempt} == {n for n in names if _seed_no_decay(n, version)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)


def _frame() -> tuple[torch.Tensor, torch.Tensor]:
    """64×128: left half black, right half grey 128 (contrast depends on which pixels it sees); mask = column."""
    image = torch.zeros(3, 64, 128, dtype=torch.uint8)
    image[:, :, 64:] = 128
    return image, torch.arange(128, dtype=torch.uint8).expand(64, 128).clone()


def _transform(order: str, **data: object) -> TrainTransform:
    fields = {"crop_size": (48, 48), "hflip": 0.0, "color_jitter": (0.0, 0.0, 0.0), "mean": (0.0,) * 3}
    return TrainTransform(DataConfig(augment_order=order, std=(1.0,) * 3, **{**fields, **data}))


def test_seed_order_jitters_the_whole_frame() -> None:
    # contrast blends towards the mean grey of what it sees: the whole frame (mean 64) in the seed's order, so a
    # grey crop becomes 64 + c·(128 − 64); the crop alone (mean 128) in the window order, so it stays 128
    image, mask = _frame()
    kwargs = {"scales": (1.0,), "color_jitter": (0.0, 0.5, 0.0)}
    found = 0
    for seed in range(40):
        out, m = _transform("seed", **kwargs)(image, mask, torch.Generator().manual_seed(seed))
        window, wm = _transform("window", **kwargs)(image, mask, torch.Generator().manual_seed(seed))
        c = 0.5 + float(torch.rand((), generator=torch.Generator().manual_seed(seed)))  # the first draw
        if int(m.min()) >= 64:  # the crop lies in the grey half
            assert (out.float() - (64 + c * 64)).abs().max() <= 1
            found += 1
        if int(wm.min()) >= 64:
            assert (window.float() - 128).abs().max() <= 1
    assert found >= 3


def test_seed_order_resizes_twice_when_the_scale_is_too_small() -> None:
    # scale 0.5: 64×128 → 32×64 (PIL int(side·s)), smaller than the 48×48 crop, so the seed re-upscales by
    # 48/32 to int(1.5·side + 1) = 49×97 and crops at int(u·(97 − 48)): a label column j of the crop is source
    # column 2·floor((j + left + 0.5)·64/97) + 1 (two pixel-centre nearest resamplings)
    image, mask = _frame()
    lefts = set()
    SCALE = torch.tensor(64 / 97, dtype=torch.float32)
    for seed in range(12):
        _, m = _transform("seed", scales=(0.5,))(image, mask, torch.Generator().manual_seed(seed))
        assert m.shape == (48, 48)
        row = m[0].long()
        matches = [
            left
            for left in range(97 - 48)
            if torch.equal(row, 2 * torch.floor((torch.arange(48.0) + left + 0.5) * SCALE).long() + 1)
        ]
        assert len(matches) >= 1, row
        lefts.update(matches)
        _, w = _transform("window", scales=(0.5,))(image, mask, torch.Generator().manual_seed(seed))
        assert not torch.equal(w[0].long(), row)  # the window order resamples once, straight to the crop
    assert len(lefts) > 3 and max(lefts) < 97 - 48


def test_seed_order_keeps_image_and_mask_aligned_and_flips() -> None:
    image, mask = _frame()
    image[0] = mask  # red channel = column index, so the image carries the mask's geometry
    t = _transform("seed", scales=(0.75, 1.0, 1.5), hflip=1.0)
    for seed in range(5):
        out, m = t(image, mask, torch.Generator().manual_seed(seed))
        red = out[0].long()
        assert (red - m).abs().max() <= 2  # bilinear vs nearest of the same ramp
        assert m[0, 0] > m[0, -1]  # flipped: columns run right to left


def test_best_of_val_reads_the_class_tables_up_to_the_step(tmp_path: Path) -> None:
    for step, miou in [(372, 50.0), (744, 70.0), (1116, 70.0), (1488, 60.0), (1860, 90.0)]:
        table = tmp_path / "val" / f"iter_{step:06d}" / "classes.csv"
        table.parent.mkdir(parents=True)
        with open(table, "w", newline="") as fh:
            csv.writer(fh).writerows(
                [["class", "IoU_points", "IoU_void_as_fp_points"], ["road", "10", "10"], ["mIoU", miou, 0]]
            )
    assert best_of_val(tmp_path, 1488) == {VAL_MIOU_BEST: 70.0, VAL_MIOU_BEST_STEP: 744.0, VAL_MIOU_BEST_N: 4.0}
    assert best_of_val(tmp_path, 1860)[VAL_MIOU_BEST] == 90.0  # a table past the step (before a resume) is ignored


def test_training_logs_the_labelled_best_of_val(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, **{"train.iterations": 4, "train.eval_every": 1, "train.log_best_of_val": True})
    tracker = JsonlTracker(tmp_path)
    train(cfg, tmp_path, tracker, progress="lines")
    tracker.close("FINISHED")
    points: dict[str, dict[int, float]] = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        p = json.loads(line)
        points.setdefault(p["key"], {})[p["step"]] = p["value"]
    miou = points[VAL_MIOU]
    assert sorted(miou) == [1, 2, 3, 4]
    for step in miou:
        so_far = {s: v for s, v in miou.items() if s <= step}
        best = max(so_far.values())
        assert points[VAL_MIOU_BEST][step] == pytest.approx(best, abs=1e-4)
        assert so_far[int(points[VAL_MIOU_BEST_STEP][step])] == pytest.approx(best, abs=1e-4)
        assert points[VAL_MIOU_BEST_N][step] == len(so_far)


def test_seed_presets_match_every_aspect_a_flag_can_reach() -> None:
    for name in ("cityscapes_r50_seed.yaml", "cityscapes_r101_seed.yaml"):
        rows = {r.aspect: r for r in deviations(load_config(CONFIGS / name))}
        assert {a: r.match for a, r in rows.items() if r.match not in ("yes", "cannot")} == {
            "backbone": "axis",
            "pretrained weights": "unverified",
        }
    clean = {r.aspect for r in deviations(load_config(CONFIGS / "cityscapes_r50_clean.yaml")) if r.match == "no"}
    assert clean == {
        "dilated stage blocks",
        "head conv bias",
        "classifier bias",
        "ASPP 1×1 fuse padding",
        "bilinear align_corners",
        "new-layer init",
        "head activation slope",
        "backbone activation slope",
        "augmentation order",
    }
    fork = {
        r.aspect: r.remedy for r in deviations(load_config(CONFIGS / "cityscapes_r50_fork.yaml")) if r.match == "no"
    }
    assert fork == {
        "norm synchronisation": "model.local_residual_bn=false",
        "weight decay": "optim.no_decay_bn=backbone",
        "iterations": "train.iterations=41000",
        "final evaluation": "eval.scales=[0.5, 0.75, 1, 1.25, 1.5, 1.75] eval.flip=true",
    }


def test_every_remedy_removes_its_deviation() -> None:
    cfg = load_config(CONFIGS / "cityscapes_r50_512x1024.yaml")
    rows = [r for r in deviations(cfg) if r.match == "no"]
    assert len(rows) > 10 and all(r.settings and r.remedy for r in rows)
    fixed = from_dict(to_dict(cfg), {k: v for r in rows for k, v in r.settings.items()})
    assert not [r.aspect for r in deviations(fixed) if r.match == "no"]


def test_table_reads_the_config() -> None:
    cfg = load_config(CONFIGS / "cityscapes_r101_seed.yaml", ["model.output_stride=8"])
    rows = {r.aspect: r for r in deviations(cfg)}
    assert rows["dilated stage blocks"].this == "layer3 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2; layer4 4,4,4"
    model = DeepLabV3Plus(backbone="resnet50", output_stride=8, dilate_first_block=False)
    rows = {
        r.aspect: r for r in deviations(load_config(CONFIGS / "cityscapes_r50_clean.yaml", ["model.output_stride=8"]))
    }
    text = rows["dilated stage blocks"].this
    assert text == "layer3 1," + ",".join(["2"] * 5) + "; layer4 2,4,4"
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [2, 4, 4]
    md = deviations_markdown(cfg, "r101")
    assert md.startswith("### r101\n") and md.count("\n| ") == len(deviations(cfg)) + 1


def test_config_from_params_as_mlflow_stores_them() -> None:
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        params = {k: str(v) for k, v in flatten(to_dict(cfg)).items()}  # MlflowTracker logs str(value)
        params |= {"info.params": "40000000", "info.config_hash": config_hash(cfg)}
        assert config_from_params(params) == cfg, path.name
    old = {k: v for k, v in params.items() if k != "model.align_corners"}  # a run from before the flag
    assert config_from_params(old).model.align_corners is False
    with pytest.raises(DeeplabError, match="model.output_stride must be one of"):
        config_from_params({"model.output_stride": "32"})


def test_docs_table_is_generated_from_the_presets() -> None:
    assert (REPO / "docs" / "deviations.md").read_text() == docs_markdown(CONFIGS), (
        "docs/deviations.md is stale: run python -m deeplab deviations --docs docs/deviations.md"
    )
