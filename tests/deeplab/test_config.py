"""Config: YAML → dataclasses, overrides, validation with named fields, hashing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deeplab.config import (
    Config,
    config_hash,
    flatten,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from deeplab.errors import DeeplabError
from deeplab.yaml_loader import parse_yaml


def test_defaults_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = from_dict({"model": {"backbone": "resnet50"}, "data": {"synthetic": {"train": 4, "val": 2}}})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert isinstance(again.data.crop_size, tuple)


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  iterations: 10\n  eval_every: 5\nschedule:\n  warmup_iters: 2\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.seed=3", "data.crop_size=[32, 64]", "eval.flip=true"])
    assert cfg.train.seed == 3
    assert cfg.data.crop_size == (32, 64)
    assert cfg.eval.flip is True
    cfg = load_config(tmp_path / "c.yaml", ["optim.lr=1e-3"])  # YAML 1.1 reads 1e-3 as a string
    assert cfg.optim.lr == 1e-3


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"trian": {}}, "unknown key trian (did you mean train?)"),
        ({"train": {"iteratons": 5}}, "train.iteratons (did you mean train.iterations?)"),
        ({"train": {"iterations": "many"}}, "train.iterations must be an integer"),
        ({"train": {"iterations": 0}}, "train.iterations must be >= 1"),
        ({"model": {"backbone": "resnet18"}}, "model.backbone must be one of"),
        ({"model": {"output_stride": 32}}, "model.output_stride must be one of"),
        ({"data": {"crop_size": [1, 2, 3]}}, "data.crop_size must be a list of 2 values"),
        ({"data": {"hflip": 2.0}}, "data.hflip must be in [0, 1]"),
        ({"loss": {"ohem_thresh": 0}}, "loss.ohem_thresh must be in (0, 1]"),
        ({"train": {"amp": "fp8"}}, "train.amp must be one of"),
        ({"eval": {"flip": "yes"}}, "eval.flip must be true or false"),
        ({"schedule": {"warmup_iters": 50}, "train": {"iterations": 50}}, "schedule.warmup_iters must be <"),
    ],
)
def test_bad_values_name_the_field(data: dict, needle: str) -> None:
    with pytest.raises(DeeplabError) as err:
        from_dict(data)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DeeplabError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(DeeplabError, match="bad.yaml line .*not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(DeeplabError, match="expected a mapping"):
        load_config(bad)
    bad.write_text("train: {seed: 1}\n")
    with pytest.raises(DeeplabError, match="--set 'train.iterations': expected section.key=value"):
        load_config(bad, ["train.iterations"])


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(DeeplabError, match="not valid YAML"):
        load_config(evil)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
        ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
        ("optim.lr=1e999", "optim.lr must be a finite number, got inf"),  # a string in YAML 1.1, inf as a float
        ("optim.momentum=-.Inf", "optim.momentum must be a finite number"),
        ("loss.ohem_thresh='NaN'", "loss.ohem_thresh must be a finite number"),
        ("data.mean=[0.4, .nan, 0.4]", "data.mean[1] must be a finite number"),
        ("eval.scales=[1.0, 1e999]", "eval.scales[1] must be a finite number"),
        ("data.crop_size=[8, 8]", "data.crop_size must be 32..4096 each"),
        # sizes that would allocate tens of GB somewhere later: refused here, at once
        ("data.crop_size=[100000, 768]", "data.crop_size must be 32..4096 each"),
        ("data.scales=[0.5, 1000]", "data.scales must be 1 to 32 numbers in (0, 8]"),
        ("eval.scales=[1.0, 64]", "eval.scales must be 1 to 32 numbers in (0, 8]"),
        ("data.batch_size_per_gpu=100000", "data.batch_size_per_gpu must be 1..256"),
        ("data.num_workers=100000", "data.num_workers must be 0..256"),
        ("model.aspp_channels=1000000", "model.aspp_channels must be 1..4096"),
        ("data.synthetic={train: 1000000000}", "data.synthetic.train/val must be 1..100000 each"),
        ("data.synthetic={height: 100000}", "data.synthetic.height/width must be in 32..4096 x 32..8192"),
        ("model.num_classes=21", "model.num_classes must be 19 (the evaluated train ids"),
        ("model.num_classes=34", "model.num_classes must be 19"),
        ("loss.ignore_index=0", "loss.ignore_index must be 255"),
        ("train.seed=-1", "train.seed must be in 0..4294967295"),
        ("train.seed=4294967296", "train.seed must be in 0..4294967295"),
        (f"train.seed={2**40}", "train.seed must be in 0..4294967295"),
        ("data.synthetic={seed: -5}", "data.synthetic.seed must be in 0..4294967295"),
        ("train.seed=1.5", "train.seed must be an integer"),
        ("model={backbone: resnet50, backbone: resnet101}", "duplicate key 'backbone'"),
    ],
)
def test_numbers_the_run_cannot_use_are_refused(tmp_path: Path, override: str, needle: str) -> None:
    (tmp_path / "c.yaml").write_text("data: {synthetic: {train: 2, val: 1}}\n")
    with pytest.raises(DeeplabError) as err:
        load_config(tmp_path / "c.yaml", [override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_yaml_alias_bomb_is_refused_in_one_line_before_it_is_built(tmp_path: Path) -> None:
    """Nine levels of ten aliases: 10⁹ values once expanded (a deep copy of them would never end)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\ndata: {root: *a9}\n")
    started = time.monotonic()
    with pytest.raises(DeeplabError) as err:
        load_config(tmp_path / "bomb.yaml")
    assert time.monotonic() - started < 5
    assert "bomb.yaml: its aliases expand to more than 100,000 values; refused unread" in str(err.value)
    assert parse_yaml("base: &b {train: 2}\nagain: *b\n") == {"base": {"train": 2}, "again": {"train": 2}}


def test_the_seed_range_ends_are_accepted() -> None:
    assert from_dict({"train": {"seed": 2**32 - 1}, "data": {"synthetic": {"seed": 0}}}).train.seed == 2**32 - 1


def test_duplicate_sections_in_a_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("model:\n  backbone: resnet50\ntrain: {seed: 1}\nmodel:\n  output_stride: 8\n")
    with pytest.raises(DeeplabError, match=r"c.yaml line 4: duplicate key 'model' \(first at line 1\)"):
        load_config(tmp_path / "c.yaml")


def test_hash_ignores_execution_only_fields_but_not_science() -> None:
    base = Config()
    same = from_dict({"data": {"num_workers": 0}, "train": {"log_every": 1, "checkpoint_every": 7}})
    other = from_dict({"train": {"seed": 1}})
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(other)


def test_flatten_gives_dotted_keys() -> None:
    flat = flatten(to_dict(Config()))
    assert flat["model.backbone"] == "resnet101"
    assert flat["data.synthetic"] is None
    assert all(" " not in k for k in flat)


@pytest.mark.parametrize("override", ["train=null", "model={}", "data=null", "eval={}"])
def test_a_whole_section_is_never_reset_by_an_override(tmp_path: Path, override: str) -> None:
    (tmp_path / "c.yaml").write_text("train: {iterations: 10, seed: 3}\nmodel: {backbone: resnet50}\n")
    section = override.split("=")[0]
    with pytest.raises(DeeplabError) as err:
        load_config(tmp_path / "c.yaml", [override])
    assert f"config: {override} would reset every key of the {section} section" in str(err.value)
    assert f"({section}.KEY=VALUE)" in str(err.value)


def test_a_mapping_sets_the_keys_it_names_and_an_optional_section_may_be_null(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "model: {backbone: resnet50, output_stride: 8}\ndata: {synthetic: {train: 4, val: 2, height: 64}}\n"
    )
    cfg = load_config(tmp_path / "c.yaml", {"model": {"image_pooling": True}, "data.synthetic": {"train": 6}})
    assert (cfg.model.backbone, cfg.model.output_stride, cfg.model.image_pooling) == ("resnet50", 8, True)
    assert (cfg.data.synthetic.train, cfg.data.synthetic.val, cfg.data.synthetic.height) == (6, 2, 64)
    assert load_config(tmp_path / "c.yaml", ["data.synthetic=null"]).data.synthetic is None
    off = tmp_path / "off.yaml"
    off.write_text("data: {synthetic: null}\n")
    assert (
        load_config(off, ["data.synthetic={}"]).data.synthetic
        == load_config(off, ["data.synthetic.train=32"]).data.synthetic
    )
    with pytest.raises(DeeplabError, match=r"unknown key model\.outptu_stride \(did you mean model\.output_stride"):
        load_config(tmp_path / "c.yaml", ["model={outptu_stride: 16}"])
