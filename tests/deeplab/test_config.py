"""Config: YAML → dataclasses, overrides, validation with named fields, hashing."""

from __future__ import annotations

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
