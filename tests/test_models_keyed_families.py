"""Keyed conversion of modern CNN families (issue 13): ConvNeXt, timm models, segmentation-style outputs.

Every model gets non-trivial weights first (:func:`wake`): random norm affine
parameters, layer scales of 1 (torchvision/timm initialize them to 1e-6 and
timm zero-initializes the last BatchNorm of each residual block, which would
make every block a no-op and hide a wrong block from the comparison) and
BatchNorm statistics calibrated on random images, so every block changes the
logits.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from checkers import scramble
from timm.layers import BatchNormAct2d, Conv2dSame, SelectAdaptivePool2d
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from torch import nn

from keyveil import Key, schemes
from keyveil.models import UnsupportedModelError, keyed, validate
from keyveil.models.functional import gather_linear2d, linear_taps
from keyveil.models.layers import DeformableConv2d, DeformablePool2d, DeformableResize

KEY, OTHER = Key.from_seed(21), Key.from_seed(22)
MODES = ("input", "features", "deformable")
SIZES = [(40, 56), (48, 36)]  # two non-square sizes


def wake(model: nn.Module, hw: tuple[int, int], *, seed: int = 0, heads: int = 1) -> nn.Module:
    """Random norm affines, layer scales 1, BatchNorm statistics from random images; eval mode.

    The last ``heads`` Linear/Conv2d layers (the classifier) are then scaled so that the outputs are
    O(1), as a trained model's are (random norm weights let them grow to ~500 in EfficientNet).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5, generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.2, 0.2, generator=g)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        for name, p in model.named_parameters():
            if name.endswith(("layer_scale", "gamma")):
                p.fill_(1.0)
        model.train()
        model(torch.rand(4, 3, *hw, generator=g))
        model.eval()
        scale = float(main_output(model(torch.rand(2, 3, *hw, generator=g))).abs().max())
        for m in [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-heads:]:
            m.weight.div_(scale)
            if m.bias is not None:
                m.bias.div_(scale)
    return model


def main_output(value):
    return value["out"] if isinstance(value, dict) else value


def check_model(model: nn.Module, hw: tuple[int, int], modes=MODES, *, wrong_key: bool = True) -> dict[str, float]:
    """Keyed (every mode) on encrypted images vs plain on plain images; a wrong key moves the output."""
    g = torch.Generator().manual_seed(4)
    x, x2 = torch.rand(1, 3, *hw, generator=g), torch.rand(1, 3, *hw, generator=g)
    y = schemes.create("pixel", KEY).encrypt(x)
    diffs = {}
    with torch.no_grad():
        ref = main_output(model(x))
        spread = float((main_output(model(x2)) - ref).abs().max())  # how far two images' outputs differ
        bound = 1e-4 * min(1.0, float(ref.abs().max()))  # 1e-4, relative where the outputs are tiny
        for mode in modes:
            km = keyed(model, KEY, mode=mode, input_size=hw, check=False)
            out = main_output(km(y))
            assert out.shape == ref.shape
            diffs[mode] = float((out - ref).abs().max())
            assert diffs[mode] <= bound, (mode, hw, diffs[mode], bound)
            if wrong_key:
                wrong = main_output(keyed(model, OTHER, mode=mode, input_size=hw, check=False)(y))
                assert float((wrong - ref).abs().max()) > max(0.05 * spread, 100 * bound), (mode, hw)
    return diffs


_CACHE: dict[str, nn.Module] = {}

BUILDERS = {
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(num_classes=10),
    "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=10),
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=10),
    "timm_convnext_atto": lambda: timm.create_model("convnext_atto", num_classes=10),
    "timm_mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050", num_classes=10),
    "timm_tf_efficientnet_b0": lambda: timm.create_model("tf_efficientnet_b0", num_classes=10),
    "fcn_resnet50": lambda: torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=False),
    "lraspp_mobilenet_v3_large": lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4),
}


def model(name: str) -> nn.Module:
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = wake(BUILDERS[name](), SIZES[0], heads=2 if name.startswith("lraspp") else 1)
    return _CACHE[name]


# -- ConvNeXt (torchvision) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", SIZES)
def test_convnext_tiny_every_mode(hw):
    net = model("convnext_tiny")
    assert any(isinstance(m, nn.LayerNorm) for m in net.modules())  # permute -> LayerNorm -> Linear blocks
    check_model(net, hw, wrong_key=hw == SIZES[0])


def test_convnext_issue_example_converts():
    """The call a new user tried (issue 13), on the untouched torchvision model."""
    torch.manual_seed(0)
    net = torchvision.models.convnext_tiny(num_classes=10).eval()
    km = keyed(net, KEY, mode="features", input_size=(56, 72))  # self-check included
    x = torch.rand(1, 3, 56, 72)
    with torch.no_grad():
        assert (km(schemes.create("pixel", KEY).encrypt(x)) - net(x)).abs().max() <= 1e-4


# -- timm --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("arch", ["timm_resnet18", "timm_efficientnet_b0", "timm_convnext_atto",
                                  "timm_mobilenetv3_small_050"])
def test_timm_every_mode(arch, hw):
    check_model(model(arch), hw, wrong_key=hw == SIZES[0])


def test_timm_models_use_timm_layers():
    """The timm models above really contain timm's own layers (not torch.nn ones); TF-ported models SAME-pad.

    ``tf_efficientnet_b0`` (Conv2dSame everywhere) is checked in one mode here to keep the suite fast;
    :class:`TimmLayers` below runs timm's SAME-padded layers in every mode.
    """
    assert any(isinstance(m, SelectAdaptivePool2d) for m in model("timm_resnet18").modules())
    assert any(isinstance(m, BatchNormAct2d) for m in model("timm_efficientnet_b0").modules())
    assert any(isinstance(m, Conv2dSame) for m in model("timm_tf_efficientnet_b0").modules())
    km = keyed(model("timm_tf_efficientnet_b0"), KEY, mode="deformable", input_size=SIZES[0], check=False)
    stem = km.get_submodule("conv_stem")  # a SAME-padded stride-2 conv, rebuilt with its asymmetric padding
    assert isinstance(stem, DeformableConv2d) and stem.padding == (0, 0) and stem.stride == (2, 2)
    x = torch.rand(1, 3, *SIZES[0])
    with torch.no_grad():
        ref = model("timm_tf_efficientnet_b0")(x)
        assert (km(schemes.create("pixel", KEY).encrypt(x)) - ref).abs().max() <= 1e-4 * min(1.0, float(ref.abs().max()))


class TimmLayers(nn.Module):
    """timm's SAME-padded conv and pools, BatchNormAct2d and SelectAdaptivePool2d in one small CNN."""

    def __init__(self, pool_type: str = "catavgmax") -> None:
        super().__init__()
        self.conv = Conv2dSame(3, 8, 3, stride=2)
        self.bn = BatchNormAct2d(8, act_layer=nn.SiLU)
        self.maxpool = MaxPool2dSame(3, stride=2)
        self.conv2 = Conv2dSame(8, 8, 4, groups=8)  # even kernel: more padding after than before
        self.avgpool = AvgPool2dSame(3, stride=2)
        self.head = SelectAdaptivePool2d(pool_type=pool_type, flatten=True)
        self.fc = nn.Linear(8 * (2 if pool_type == "catavgmax" else 1), 5)

    def forward(self, x):
        x = self.maxpool(self.bn(self.conv(x)))
        return self.fc(self.head(self.avgpool(torch.relu(self.conv2(x)))))


@pytest.mark.parametrize("pool_type", ["catavgmax", "max"])
@pytest.mark.parametrize("hw", [(13, 18), (16, 11)])
def test_timm_same_padding_layers_every_mode(pool_type, hw):
    torch.manual_seed(0)
    net = wake(TimmLayers(pool_type), hw)
    diffs = check_model(net, hw)
    assert max(diffs.values()) < 1e-5
    km = keyed(net, KEY, mode="deformable", input_size=hw)
    assert isinstance(km.get_submodule("conv"), DeformableConv2d)
    assert isinstance(km.get_submodule("maxpool"), DeformablePool2d)
    assert isinstance(km.get_submodule("avgpool"), DeformablePool2d)


def test_timm_same_conv_with_torchvision_deform_conv2d_kernel():
    torch.manual_seed(0)
    net = wake(TimmLayers(), (13, 18))
    gather = keyed(net, KEY, mode="deformable", input_size=(13, 18))
    reference = keyed(net, KEY, mode="deformable", input_size=(13, 18), kernel="deform_conv2d", check=False)
    y = torch.rand(3, 3, 13, 18)
    with torch.no_grad():
        assert (gather(y) - reference(y)).abs().max() < 1e-5


def test_timm_batchnormact_follows_train_mode():
    """BatchNormAct2d stays a module of the keyed model: in train mode it uses batch statistics, as the plain one."""
    torch.manual_seed(0)
    net = wake(TimmLayers(), (13, 18)).train()
    km = keyed(net, KEY, mode="features", input_size=(13, 18))
    assert km.training
    x = torch.rand(4, 3, 13, 18)
    assert (km(schemes.create("pixel", KEY).encrypt(x)) - net(x)).abs().max() < 1e-5
    net.eval()
    km.eval()
    with torch.no_grad():
        assert (km(schemes.create("pixel", KEY).encrypt(x)) - net(x)).abs().max() < 1e-5


# -- segmentation-style outputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("hw", SIZES)
def test_fcn_resnet50_output_map_every_mode(hw):
    net = model("fcn_resnet50")
    check_model(net, hw, wrong_key=hw == SIZES[0])
    km = keyed(net, KEY, mode="features", input_size=hw, check=False)
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        out = km(schemes.create("pixel", KEY).encrypt(x))
    assert isinstance(out, dict) and set(out) == {"out"} and out["out"].shape == (1, 4, *hw)


def test_lraspp_output_map_every_mode():
    """LR-ASPP also resizes inside its head (the high-level branch, before adding the low-level one)."""
    check_model(model("lraspp_mobilenet_v3_large"), SIZES[0], wrong_key=False)  # FCN checks the wrong key


def test_fully_convolutional_map_is_unscrambled_at_the_end():
    """A map returned straight from position-wise layers (no resize) gets one un-scramble before the output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 1), nn.Sigmoid()).eval()
    for mode in MODES:
        km = keyed(net, KEY, mode=mode, input_size=(9, 14))
        x = torch.rand(2, 3, 9, 14)
        with torch.no_grad():
            assert (km(schemes.create("pixel", KEY).encrypt(x)) - net(x)).abs().max() < 1e-6


@pytest.mark.parametrize("kwargs", [dict(mode="bilinear", align_corners=False), dict(mode="bilinear", align_corners=True),
                                    dict(mode="nearest"), dict(mode="bicubic", align_corners=False),
                                    dict(mode="area"), dict(mode="bilinear", antialias=True)])
@pytest.mark.parametrize("sizes", [((5, 7), (12, 17)), ((9, 6), (4, 5))])
def test_deformable_resize_matches_interpolate(kwargs, sizes):
    in_hw, out_hw = sizes
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, *in_hw, generator=g)
    ref = F.interpolate(x, size=out_hw, **kwargs)
    pin = torch.randperm(in_hw[0] * in_hw[1], generator=g)
    pout = torch.randperm(out_hw[0] * out_hw[1], generator=g)

    def op(t):
        return F.interpolate(t, size=out_hw, **kwargs)

    layer = DeformableResize(op, in_hw=in_hw, out_hw=out_hw, in_perm=pin, out_perm=pout)
    assert (layer(scramble(x, pin)) - scramble(ref, pout)).abs().max() < 1e-5
    taps, weights = linear_taps(op, in_hw, out_hw)  # plain order, applied by the gather kernel
    assert (gather_linear2d(x, taps, weights, out_hw=out_hw, chunk_rows=50) - ref).abs().max() < 1e-5


# -- what stays refused --------------------------------------------------------------------------------------


def test_swin_window_attention_is_refused_naming_the_modules():
    torch.manual_seed(0)
    swin = torchvision.models.swin_t(num_classes=10).eval()
    with pytest.raises(UnsupportedModelError) as info:
        keyed(swin, KEY, input_size=(3, 64, 64), check=False)
    problems = info.value.problems
    assert len(problems) == 1 and problems[0].node.startswith("features.1.0.attn")
    msg = str(info.value)
    assert "features.1.0.attn" in msg and "window attention" in msg and "mode='input'" in msg
    km = keyed(swin, KEY, mode="input", input_size=(3, 64, 64))  # input mode works for any model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (km(schemes.create("pixel", KEY).encrypt(x)) - swin(x)).abs().max() <= 1e-4


class ChannelsLast(nn.Module):
    """A ConvNeXt-style block written by hand, plus a switch for each mistake the validator must catch."""

    def __init__(self, mistake: str | None = None) -> None:
        super().__init__()
        self.mistake = mistake
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.norm = nn.LayerNorm(4 if mistake != "norm_width" else 9)
        self.fc = nn.Linear(4, 4) if mistake != "linear_width" else nn.Linear(9, 9)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.dw(x)
        if self.mistake == "norm_width":
            y = self.norm(y)  # over the width axis of (B, C, H, W)
        elif self.mistake == "linear_width":
            y = self.fc(y)
        elif self.mistake == "swap_hw":
            y = y.permute(0, 3, 2, 1)  # (B, W, H, C): H and W swapped
            y = y.permute(0, 3, 2, 1)
        else:
            y = y.permute(0, 2, 3, 1)
            y = self.fc(F.gelu(self.norm(y)))
            y = y.permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def test_channels_last_block_is_position_wise():
    torch.manual_seed(0)
    net = ChannelsLast().eval()
    for mode in MODES:
        km = keyed(net, KEY, mode=mode, input_size=(4, 7, 9))
        x = torch.rand(2, 4, 7, 9)
        with torch.no_grad():
            assert (km(schemes.create("pixel", KEY).encrypt(x)) - net(x)).abs().max() < 1e-6


@pytest.mark.parametrize("mistake,needle", [("norm_width", "width"), ("linear_width", "width"),
                                            ("swap_hw", "moves the spatial axes")])
def test_channels_last_mistakes_are_refused(mistake, needle):
    problems = validate(ChannelsLast(mistake), (4, 7, 9))
    assert len(problems) == 1 and needle in problems[0].reason
