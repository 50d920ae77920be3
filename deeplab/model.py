"""DeepLabV3+ on torchvision's ResNet-50/101: ASPP and a decoder on top of features tapped by name.

The keyword switches after ``decoder_channels`` reproduce the seed's choices (docs/deviations.md); their
defaults are this project's clean model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet

from deeplab.checkpoint import weights_of
from deeplab.config import ModelConfig
from deeplab.errors import DeeplabError
from deeplab.norm import LocalBatchNorm2d

_RESNETS = {  # blocks per stage, ImageNet weights
    "resnet50": ([3, 4, 6, 3], ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": ([3, 4, 23, 3], ResNet101_Weights.IMAGENET1K_V1),
}


def _activation(slope: float) -> nn.Module:
    return nn.LeakyReLU(slope, inplace=True) if slope > 0 else nn.ReLU(inplace=True)


class _Bottleneck(Bottleneck):
    """torchvision's bottleneck with a settable activation after bn1 and bn2 (the residual sum keeps ReLU)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inner_act: nn.Module = self.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner_act(self.bn1(self.conv1(x)))
        out = self.inner_act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def _resnet(
    backbone: str, output_stride: int, dilate_first_block: bool, leaky_slope: float, local_residual_bn: bool
) -> ResNet:
    dilate = [False, output_stride == 8, True]
    resnet = ResNet(_Bottleneck, _RESNETS[backbone][0], replace_stride_with_dilation=dilate)
    if dilate_first_block:  # the seed dilates every block of a dilated stage; torchvision keeps the first at 1
        for layer, dilated in zip((resnet.layer2, resnet.layer3, resnet.layer4), dilate, strict=True):
            if dilated:
                layer[0].conv2.dilation = layer[0].conv2.padding = layer[1].conv2.dilation
    blocks = [m for m in resnet.modules() if isinstance(m, _Bottleneck)]
    if leaky_slope > 0:  # the seed: InPlaceABN's leaky ReLU after the stem and bn1/bn2 of every block
        resnet.relu = _activation(leaky_slope)
        for block in blocks:
            block.inner_act = _activation(leaky_slope)
    if local_residual_bn:  # the seed's Feb-2019 code and the fork: plain per-GPU BatchNorm2d there
        for block in blocks:
            block.bn3 = LocalBatchNorm2d(block.bn3.num_features)
            if block.downsample is not None:
                block.downsample[1] = LocalBatchNorm2d(block.downsample[1].num_features)
    return resnet


def _conv_bn_relu(
    cin: int, cout: int, kernel: int, dilation: int = 1, *, bias: bool = False, slope: float = 0.0, padding: int = -1
) -> nn.Sequential:
    padding = (0 if kernel == 1 else dilation) if padding < 0 else padding
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=bias),
        nn.BatchNorm2d(cout),
        _activation(slope),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average → 1×1 conv → broadcast back."""

    def __init__(self, cin: int, cout: int, **conv: Any) -> None:
        super().__init__()
        self.proj = _conv_bn_relu(cin, cout, 1, **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.proj(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1 + three 3×3 atrous branches (+ image pooling), fused by a 1×1.

    ``fuse_padding=1`` is the seed's quirk: its 1×1 fuse conv pads by one, so the map grows by 2 pixels with a
    constant border. ``conv`` (bias, slope) goes to every conv-norm-activation.
    """

    def __init__(
        self, cin: int, cout: int, rates: tuple[int, int, int], image_pooling: bool, fuse_padding: int = 0, **conv: Any
    ) -> None:
        super().__init__()
        branches = [_conv_bn_relu(cin, cout, 1, **conv)] + [_conv_bn_relu(cin, cout, 3, r, **conv) for r in rates]
        if image_pooling:
            branches.append(ImagePooling(cin, cout, **conv))
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(cout * len(branches), cout, 1, padding=fuse_padding, **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class Decoder(nn.Module):
    """Low-level projection, concat with upsampled ASPP output, two 3×3 convs, classifier."""

    def __init__(
        self,
        low_in: int,
        low_out: int,
        aspp_out: int,
        channels: int,
        num_classes: int,
        *,
        align_corners: bool = False,
        classifier_bias: bool = True,
        **conv: Any,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.low = _conv_bn_relu(low_in, low_out, 1, **conv)
        self.fuse = nn.Sequential(
            _conv_bn_relu(low_out + aspp_out, channels, 3, **conv), _conv_bn_relu(channels, channels, 3, **conv)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=classifier_bias)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
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
        align_corners: bool = False,
        dilate_first_block: bool = False,
        head_conv_bias: bool = False,
        classifier_bias: bool = True,
        aspp_fuse_padding: int = 0,
        head_init: str = "fan_out_relu",
        head_leaky_slope: float = 0.0,
        backbone_leaky_slope: float = 0.0,
        local_residual_bn: bool = False,
    ) -> None:
        super().__init__()
        if backbone not in _RESNETS:
            raise DeeplabError(f"model.backbone: unknown backbone {backbone!r} (expected one of {list(_RESNETS)})")
        if output_stride not in (8, 16):
            raise DeeplabError(f"model.output_stride must be 8 or 16, got {output_stride}")
        if head_init not in _INITS:
            raise DeeplabError(f"model.head_init: unknown init {head_init!r} (expected one of {list(_INITS)})")
        self.align_corners = align_corners
        resnet = _resnet(backbone, output_stride, dilate_first_block, backbone_leaky_slope, local_residual_bn)
        self.backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out", "layer1": "low"})
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        conv = {"bias": head_conv_bias, "slope": head_leaky_slope}
        self.aspp = ASPP(2048, aspp_channels, rates, image_pooling, aspp_fuse_padding, **conv)
        self.decoder = Decoder(
            256,
            low_level_channels,
            aspp_channels,
            decoder_channels,
            num_classes,
            align_corners=align_corners,
            classifier_bias=classifier_bias,
            **conv,
        )
        for module in [self.aspp, self.decoder]:
            _init_new_layers(module, head_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        logits = self.decoder(self.aspp(feats["out"]), feats["low"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


_INITS = {  # new-layer conv init: ours, and the seed's kaiming_normal_(a=1) (fan_in, gain 1: std 1/sqrt(fan_in))
    "fan_out_relu": lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
    "fan_in_a1": lambda w: nn.init.kaiming_normal_(w, a=1),
}


def _init_new_layers(module: nn.Module, scheme: str = "fan_out_relu") -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            _INITS[scheme](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """DeepLabV3Plus's keyword arguments from the model config (everything but the weights to load)."""
    skip = {"weights", "sync_bn"}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in skip}


def build_model(cfg: ModelConfig) -> DeepLabV3Plus:
    """Map the model config onto DeepLabV3Plus and load the requested weights."""
    model = DeepLabV3Plus(**model_kwargs(cfg))
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

    model = DeepLabV3Plus(**model_kwargs(cfg)).eval()
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
