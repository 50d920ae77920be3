"""DeepLabV3+ on torchvision's ResNet-50/101: ASPP and a decoder on top of features tapped by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter

from deeplab.checkpoint import weights_of
from deeplab.config import ModelConfig
from deeplab.errors import DeeplabError

_RESNETS = {
    "resnet50": (resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (resnet101, ResNet101_Weights.IMAGENET1K_V1),
}


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average → 1×1 conv → broadcast back."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = _conv_bn_relu(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.proj(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1 + three 3×3 atrous branches (+ image pooling), fused by a 1×1."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int], image_pooling: bool) -> None:
        super().__init__()
        branches = [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        if image_pooling:
            branches.append(ImagePooling(cin, cout))
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(cout * len(branches), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class Decoder(nn.Module):
    """Low-level projection, concat with upsampled ASPP output, two 3×3 convs, classifier."""

    def __init__(self, low_in: int, low_out: int, aspp_out: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.low = _conv_bn_relu(low_in, low_out, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(low_out + aspp_out, channels, 3), _conv_bn_relu(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, self.low(low)], dim=1)))


class DeepLabV3Plus(nn.Module):
    """Backbone features {"out": stride 8/16, "low": stride 4} → ASPP → decoder → logits at input size."""

    def __init__(
        self,
        *,
        backbone: str = "resnet101",
        output_stride: int = 16,
        image_pooling: bool = False,
        num_classes: int = 19,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__()
        if backbone not in _RESNETS:
            raise DeeplabError(f"model.backbone: unknown backbone {backbone!r} (expected one of {list(_RESNETS)})")
        if output_stride not in (8, 16):
            raise DeeplabError(f"model.output_stride must be 8 or 16, got {output_stride}")
        dilate = [False, output_stride == 8, True]
        resnet = _RESNETS[backbone][0](weights=None, replace_stride_with_dilation=dilate)
        self.backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out", "layer1": "low"})
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(2048, aspp_channels, rates, image_pooling)
        self.decoder = Decoder(256, low_level_channels, aspp_channels, decoder_channels, num_classes)
        for module in [self.aspp, self.decoder]:
            _init_new_layers(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        logits = self.decoder(self.aspp(feats["out"]), feats["low"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _init_new_layers(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(cfg: ModelConfig) -> DeepLabV3Plus:
    """Map the model config onto DeepLabV3Plus and load the requested weights."""
    model = DeepLabV3Plus(
        backbone=cfg.backbone,
        output_stride=cfg.output_stride,
        image_pooling=cfg.image_pooling,
        num_classes=cfg.num_classes,
        aspp_channels=cfg.aspp_channels,
        low_level_channels=cfg.low_level_channels,
        decoder_channels=cfg.decoder_channels,
    )
    if cfg.weights == "imagenet":
        _load_backbone(model, _cached_imagenet_state(cfg.backbone), "the torch hub cache")
    elif cfg.weights != "none":
        _load_local_weights(model, Path(cfg.weights))
    return model


def _hub_checkpoint_path(backbone: str) -> Path:
    url = _RESNETS[backbone][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _cached_imagenet_state(backbone: str) -> dict[str, torch.Tensor]:
    path = _hub_checkpoint_path(backbone)
    if not path.is_file():
        raise DeeplabError(
            f"model.weights=imagenet: {path} is not in the torch hub cache; "
            "run `python -m deeplab weights prefetch` on a machine with internet (or set TORCH_HOME)"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_backbone(model: DeepLabV3Plus, state: dict[str, torch.Tensor], source: str) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.backbone.state_dict()
    for key, value in state.items():
        if key not in own or own[key].shape != value.shape:
            raise DeeplabError(f"model.weights: {source}: key {key!r} does not fit a {type(model).__name__} backbone")
    missing = sorted(set(own) - set(state))
    if missing:
        raise DeeplabError(f"model.weights: {source}: missing backbone key {missing[0]!r}")
    model.backbone.load_state_dict(state)


def _load_local_weights(model: DeepLabV3Plus, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DeeplabError(f"model.weights: file not found: {path}") from None
    except Exception as err:
        raise DeeplabError(f"model.weights: {path} is not a readable state_dict ({err.__class__.__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = weights_of(state, f"model.weights: {path}")  # one of our checkpoints
    if not isinstance(state, dict):
        raise DeeplabError(f"model.weights: {path} does not hold a state_dict")
    if any(k.startswith(("backbone.", "aspp.", "decoder.")) for k in state):
        own = model.state_dict()
        for key, value in state.items():
            if key not in own or own[key].shape != value.shape:
                raise DeeplabError(f"model.weights: {path}: key {key!r} does not fit this model")
        missing = sorted(set(own) - set(state))
        if missing:
            raise DeeplabError(f"model.weights: {path}: missing key {missing[0]!r}: it does not fit this model")
        model.load_state_dict(state)
    else:
        _load_backbone(model, state, str(path))


def prefetch_weights(backbones: list[str]) -> list[Path]:
    """Download torchvision's ImageNet weights into the torch hub cache (skipped when already there)."""
    paths = []
    for name in backbones:
        if name not in _RESNETS:
            raise DeeplabError(f"weights prefetch: unknown backbone {name!r} (expected one of {list(_RESNETS)})")
        path = _hub_checkpoint_path(name)
        if not path.is_file():
            try:
                _RESNETS[name][1].get_state_dict(progress=True)
            except OSError as err:
                raise DeeplabError(f"weights prefetch: cannot download {name} weights ({err})") from None
        paths.append(path)
    return paths


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_info(cfg: ModelConfig, crop_size: tuple[int, int]) -> dict[str, Any]:
    """Parameters and FLOPs per forward at the crop size: cost is part of the res50-vs-res101 question."""
    from torch.utils.flop_counter import FlopCounterMode

    model = DeepLabV3Plus(
        backbone=cfg.backbone,
        output_stride=cfg.output_stride,
        image_pooling=cfg.image_pooling,
        num_classes=cfg.num_classes,
        aspp_channels=cfg.aspp_channels,
        low_level_channels=cfg.low_level_channels,
        decoder_channels=cfg.decoder_channels,
    ).eval()
    with torch.device("meta"):
        x = torch.empty(1, 3, *crop_size)
    model = model.to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    flops = counter.get_total_flops()
    return {
        "backbone": cfg.backbone,
        "output_stride": cfg.output_stride,
        "image_pooling": cfg.image_pooling,
        "crop_size": list(crop_size),
        "params": count_params(model),
        "params_backbone": count_params(model.backbone),
        "params_head": count_params(model.aspp) + count_params(model.decoder),
        "flops_per_forward": int(flops),
        "gflops": round(flops / 1e9, 3),
    }
