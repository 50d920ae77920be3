"""The one YAML loader: duplicate keys refused at any depth (with both lines), merges still allowed, files named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deeplab.errors import DeeplabError
from deeplab.yaml_loader import DuplicateKeyError, load_yaml_file, parse_yaml


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("model: {}\ntrain: {}\nmodel: {}\n", "model", (3, 1)),
        ("train:\n  seed: 1\n  iterations: 5\n  seed: 2\n", "seed", (4, 2)),
        ("a:\n  b:\n    - {c: 1, c: 2}\n", "c", (3, 3)),
        ("grid:\n  train.seed: [0]\n  train.seed: [1]\n", "train.seed", (3, 2)),
        ("1: a\n1: b\n", 1, (2, 1)),
    ],
)
def test_duplicate_keys_at_any_depth_are_refused(text: str, key: object, lines: tuple[int, int]) -> None:
    with pytest.raises(DuplicateKeyError) as err:
        parse_yaml(text)
    assert err.value.problem == f"duplicate key {key!r}"
    assert (err.value.problem_mark.line + 1, err.value.first_line) == lines


def test_plain_yaml_still_parses_like_safe_load() -> None:
    text = "base: &b {lr: 0.01, momentum: 0.9}\nrun:\n  <<: *b\n  lr: 0.1\nlist: [1, .inf, 1e-3]\n"
    assert parse_yaml(text) == yaml.safe_load(text)  # an explicit key may override a merged one
    assert parse_yaml(text)["run"] == {"lr": 0.1, "momentum": 0.9}


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "dup.yaml").write_text("model:\n  backbone: resnet50\nmodel:\n  backbone: resnet101\n")
    (tmp_path / "binary.yaml").write_bytes(b"\x00\xff\xfe garbage")
    cases = {
        tmp_path / "dup.yaml": "dup.yaml line 3: duplicate key 'model' (first at line 1)",
        tmp_path: "is a directory, expected a YAML file",
        tmp_path / "none.yaml": "config file not found",
        tmp_path / "binary.yaml": "binary.yaml: not valid YAML (byte 1: invalid start byte)",
    }
    for path, needle in cases.items():
        with pytest.raises(DeeplabError, match=re.escape(needle)):
            load_yaml_file(path, "config file")
