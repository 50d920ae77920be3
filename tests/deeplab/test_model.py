"""DeepLabV3+: shapes at OS 8/16, the paper's parameter counts, weights loading errors, info JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deeplab.config import ModelConfig
from deeplab.errors import DeeplabError
from deeplab.model import DeepLabV3Plus, build_model, count_params, model_info, prefetch_weights


@pytest.mark.parametrize(("backbone", "expected"), [("resnet50", 40.35e6), ("resnet101", 59.34e6)])
def test_paper_parameter_counts(backbone: str, expected: float) -> None:
    model = DeepLabV3Plus(backbone=backbone, image_pooling=True)
    assert count_params(model) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_logits_at_input_size_and_feature_stride(output_stride: int) -> None:
    model = DeepLabV3Plus(backbone="resnet50", output_stride=output_stride, num_classes=19).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    assert out.shape == (1, 19, 64, 96)
    assert feats["out"].shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert feats["low"].shape[1:] == (256, 16, 24)
    rates = [b[0].dilation[0] for b in model.aspp.branches[1:4]]
    assert rates == ([6, 12, 18] if output_stride == 16 else [12, 24, 36])


def test_local_weights_file_round_trip_and_errors(tmp_path: Path) -> None:
    model = build_model(ModelConfig(backbone="resnet50", weights="none"))
    torch.save(model.state_dict(), tmp_path / "full.pt")
    again = build_model(ModelConfig(backbone="resnet50", weights=str(tmp_path / "full.pt")))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    torch.save(model.backbone.state_dict(), tmp_path / "backbone.pt")  # a torchvision-style ResNet state_dict
    build_model(ModelConfig(backbone="resnet50", weights=str(tmp_path / "backbone.pt")))
    with pytest.raises(DeeplabError, match="does not fit"):
        build_model(ModelConfig(backbone="resnet101", weights=str(tmp_path / "full.pt")))
    with pytest.raises(DeeplabError, match="file not found"):
        build_model(ModelConfig(weights=str(tmp_path / "nope.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DeeplabError, match="junk.pt is not a readable state_dict"):
        build_model(ModelConfig(weights=str(tmp_path / "junk.pt")))


def test_imagenet_weights_come_from_the_hub_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no internet here: a missing cache entry must fail fast with the prefetch hint; a present one is used as is
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DeeplabError, match="weights prefetch"):
        build_model(ModelConfig(backbone="resnet50", weights="imagenet"))
    resnet = DeepLabV3Plus(backbone="resnet50").backbone.state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet, cache / "resnet50-0676ba61.pth")
    assert prefetch_weights(["resnet50"]) == [cache / "resnet50-0676ba61.pth"]
    build_model(ModelConfig(backbone="resnet50", weights="imagenet"))


def test_info_reports_cost_of_each_backbone() -> None:
    r50 = model_info(ModelConfig(backbone="resnet50"), (256, 256))
    r101 = model_info(ModelConfig(backbone="resnet101"), (256, 256))
    assert r101["params"] > r50["params"] and r101["flops_per_forward"] > r50["flops_per_forward"]
    assert r50["params"] == r50["params_backbone"] + r50["params_head"]
    out = subprocess.run(
        [sys.executable, "-m", "deeplab", "info", "configs/synthetic_tiny.yaml"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["output_stride"] == 16
