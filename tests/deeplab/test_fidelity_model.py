"""Model and evaluator fidelity flags pinned against the seed's behaviour (CoinCheung HEAD) on small tensors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny import REPO
from torch import nn
from torchvision.models import resnet50

from deeplab.config import load_config
from deeplab.evaluate import predict
from deeplab.model import ASPP, DeepLabV3Plus, _Bottleneck, count_params, model_kwargs
from deeplab.norm import CpuSyncBatchNorm, LocalBatchNorm2d, _convert

SEED_FLAGS = {
    "align_corners": True,
    "dilate_first_block": True,
    "head_conv_bias": True,
    "classifier_bias": False,
    "aspp_fuse_padding": 1,
    "head_init": "fan_in_a1",
    "head_leaky_slope": 0.01,
    "backbone_leaky_slope": 0.01,
}


def _dilations(layer: nn.Sequential) -> list[int]:
    return [block.conv2.dilation[0] for block in layer]


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_stages_dilate_every_block_like_the_seed(output_stride: int) -> None:
    # the seed's create_stage gives every block of a stage the same dilation; torchvision keeps the first block
    # at the previous stage's dilation (padding follows the dilation, so sizes are the same)
    ours = DeepLabV3Plus(backbone="resnet50", output_stride=output_stride).backbone
    seed = DeepLabV3Plus(backbone="resnet50", output_stride=output_stride, dilate_first_block=True).backbone
    if output_stride == 16:
        assert _dilations(ours.layer4) == [1, 2, 2] and _dilations(seed.layer4) == [2, 2, 2]
        assert _dilations(seed.layer3) == [1] * 6
    else:
        assert _dilations(ours.layer3) == [1] + [2] * 5 and _dilations(ours.layer4) == [2, 4, 4]
        assert _dilations(seed.layer3) == [2] * 6 and _dilations(seed.layer4) == [4] * 3
    assert all(b.conv2.padding == b.conv2.dilation and b.conv2.stride == (1, 1) for b in seed.layer4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert seed.eval()(x)["out"].shape[-2:] == (64 // output_stride, 64 // output_stride)


def test_fuse_conv_padding_quirk_grows_the_map_with_a_constant_border() -> None:
    aspp = ASPP(32, 8, (1, 2, 3), image_pooling=False, fuse_padding=1, bias=True, slope=0.01).eval()
    nn.init.normal_(aspp.project[0].bias)
    with torch.no_grad():
        out = aspp(torch.randn(2, 32, 48, 48))
    assert out.shape == (2, 8, 50, 50)  # the seed's 48×48 → 50×50
    border = torch.cat([out[..., 0, :], out[..., -1, :], out[..., 1:-1, 0], out[..., 1:-1, -1]], dim=-1)
    assert torch.equal(border, border[..., :1].expand_as(border))  # one value per image and channel
    assert not torch.equal(out[..., 1:-1, 1:-1], border[..., :1, None].expand(2, 8, 48, 48))
    model = DeepLabV3Plus(backbone="resnet50", aspp_fuse_padding=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 19, 64, 96)


@pytest.mark.parametrize("aligned", [True, False])
def test_align_corners_reaches_the_decoder_and_final_upsampling(aligned: bool) -> None:
    model = DeepLabV3Plus(backbone="resnet50", align_corners=aligned).eval()
    seen: dict[str, torch.Tensor] = {}
    model.aspp.register_forward_hook(lambda _m, _i, out: seen.update(aspp=out))
    model.decoder.fuse.register_forward_hook(lambda _m, i, _o: seen.update(fuse_in=i[0]))
    model.decoder.classifier.register_forward_hook(lambda _m, _i, out: seen.update(low=out))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96))
    for flag in (True, False):
        up = F.interpolate(seen["aspp"], size=(16, 24), mode="bilinear", align_corners=flag)
        full = F.interpolate(seen["low"], size=(64, 96), mode="bilinear", align_corners=flag)
        assert torch.equal(seen["fuse_in"][:, :256], up) is (flag == aligned)
        assert torch.equal(logits, full) is (flag == aligned)


class _Probe(nn.Module):
    """A 1×1 conv then ×½ bilinear like a segmentation net, so upsampling back to the input size matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)


def _seed_msc_eval(net: nn.Module, image: torch.Tensor, scales: tuple[float, ...], flip: bool) -> torch.Tensor:
    """The seed's MscEval: resize to int(H·s)×int(W·s) and back, corners aligned, softmax summed."""
    h, w = image.shape[-2:]
    total = torch.zeros(image.shape[0], 4, h, w)
    for s in scales:
        im = F.interpolate(image, [int(h * s), int(w * s)], mode="bilinear", align_corners=True)
        for flipped in (False, True) if flip else (False,):
            out = net(im.flip(3)) if flipped else net(im)
            out = out.flip(3) if flipped else out
            total += F.interpolate(out, (h, w), mode="bilinear", align_corners=True).softmax(1)
    return total


def test_evaluator_with_align_corners_is_the_seeds_multiscale_flip() -> None:
    torch.manual_seed(0)
    net, image = _Probe().eval(), torch.randn(1, 3, 37, 53)
    scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    want = _seed_msc_eval(net, image, scales, flip=True)
    torch.testing.assert_close(predict(net, image, scales, True, "none", align_corners=True), want)
    assert not torch.allclose(predict(net, image, scales, True, "none"), want, atol=1e-4)


def test_seed_init_statistics() -> None:
    # kaiming_normal_(a=1), fan_in: std 1/sqrt(fan_in); ours (fan_out, relu) is 4x larger on the 3×3 ASPP
    # convs and 5.2x on the classifier, as the issue measured
    torch.manual_seed(0)
    ours = DeepLabV3Plus(backbone="resnet50", num_classes=19)
    seed = DeepLabV3Plus(backbone="resnet50", num_classes=19, head_init="fan_in_a1")
    for conv, fan_in, fan_out, ratio in [
        (lambda m: m.aspp.branches[1][0], 2048 * 9, 256 * 9, 4.0),
        (lambda m: m.decoder.classifier, 256, 19, 5.19),
    ]:
        s, o = conv(seed).weight.std().item(), conv(ours).weight.std().item()
        assert s == pytest.approx(fan_in**-0.5, rel=0.05)
        assert o == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
        assert o / s == pytest.approx(ratio, rel=0.05)
    biases = [m.bias for m in seed.decoder.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_bias_flags_and_parameter_counts() -> None:
    seed = DeepLabV3Plus(backbone="resnet50", **SEED_FLAGS)
    clean = DeepLabV3Plus(backbone="resnet50")
    head_convs = [m for m in [*seed.aspp.modules(), *seed.decoder.modules()] if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None for m in head_convs if m is not seed.decoder.classifier)
    assert seed.decoder.classifier.bias is None and clean.decoder.classifier.bias is not None
    assert not any(m.bias is not None for m in clean.aspp.modules() if isinstance(m, nn.Conv2d))
    # 4 ASPP branches + fuse (256 each), low-level 1×1 (48), two decoder 3×3 (256 each), minus 19 classifier biases
    assert count_params(seed) - count_params(clean) == 256 * 5 + 48 + 256 * 2 - 19
    for backbone, paper in [("resnet50", 40.35e6), ("resnet101", 59.34e6)]:  # the bar of test_model.py
        with torch.device("meta"):
            model = DeepLabV3Plus(backbone=backbone, image_pooling=True, **SEED_FLAGS)
        assert count_params(model) == pytest.approx(paper, rel=0.01)


def test_leaky_slopes_reach_the_seeds_activations() -> None:
    model = DeepLabV3Plus(backbone="resnet50", head_leaky_slope=0.01, backbone_leaky_slope=0.01).eval()
    head_acts = [m for m in [*model.aspp.modules(), *model.decoder.modules()] if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert head_acts and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01 for m in head_acts)
    assert isinstance(model.backbone.relu, nn.LeakyReLU)
    block = model.backbone.layer2[1]
    assert isinstance(block.inner_act, nn.LeakyReLU) and type(block.relu) is nn.ReLU
    inputs: list[torch.Tensor] = []
    block.conv2.register_forward_hook(lambda _m, i, _o: inputs.append(i[0]))
    block.register_forward_hook(lambda _m, _i, o: inputs.append(o))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    after_bn1, output = inputs
    assert after_bn1.min() < 0  # leaky after bn1 lets negatives through
    assert output.min() >= 0  # the residual sum keeps ReLU, as in the seed's Bottleneck


def test_local_residual_norms_stay_per_gpu_when_the_rest_syncs() -> None:
    # the seed's Feb-2019 code and the fork: bn3 and downsample are plain BatchNorm2d, the other norms synced
    seed, clean = DeepLabV3Plus(backbone="resnet50", local_residual_bn=True), DeepLabV3Plus(backbone="resnet50")
    assert seed.state_dict().keys() == clean.state_dict().keys()
    for sync in (CpuSyncBatchNorm, nn.SyncBatchNorm):  # CPU (gloo) and CUDA conversions; no GPU needed to build
        model = _convert(copy.deepcopy(seed), sync)
        block = model.backbone.layer1[0]
        assert type(block.bn3) is LocalBatchNorm2d and type(block.downsample[1]) is LocalBatchNorm2d
        assert type(block.bn1) is sync and type(model.backbone.bn1) is sync and type(model.aspp.project[1]) is sync
        converted = _convert(copy.deepcopy(clean), sync)
        assert not any(type(m) in (nn.BatchNorm2d, LocalBatchNorm2d) for m in converted.modules())


def test_defaults_are_torchvisions_resnet_and_the_clean_head() -> None:
    torch.manual_seed(0)
    ours = DeepLabV3Plus(backbone="resnet50").eval()
    torch.manual_seed(0)
    reference = resnet50(weights=None, replace_stride_with_dilation=[False, False, True]).eval()
    state = reference.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in ours.backbone.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        r = reference.layer4(reference.layer3(reference.layer2(reference.layer1(reference.maxpool(
            reference.relu(reference.bn1(reference.conv1(x))))))))  # fmt: skip
        torch.testing.assert_close(ours.backbone(x)["out"], r, rtol=0, atol=0)
    assert all(type(b.inner_act) is nn.ReLU for b in ours.backbone.modules() if isinstance(b, _Bottleneck))


def test_seed_presets_build_the_seed_model() -> None:
    for backbone in ("r50", "r101"):
        cfg = load_config(REPO / "configs" / f"cityscapes_{backbone}_seed.yaml")
        assert {k: v for k, v in model_kwargs(cfg.model).items() if k in SEED_FLAGS} == SEED_FLAGS
        assert cfg.model.align_corners  # the evaluator reads the same key (validation and `deeplab evaluate`)
