"""Keyed CNNs: kernels against slow references, torchvision models in every mode, the validator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from checkers import scramble
from torch import nn
from torchvision.ops import deform_conv2d

from keyveil import Key, schemes
from keyveil.models import UnsupportedModelError, keyed, validate
from keyveil.models.functional import (
    adaptive_window,
    conv_window,
    gather_conv2d,
    gather_pool2d,
    permute_positions,
    taps_to_offsets,
    window_taps,
)
from keyveil.models.keyed_cnn import feature_permutation
from keyveil.models.layers import (
    DeformableConv2d,
    DeformablePool2d,
    FoldedLinear,
    PositionPermutation,
    StridedPointwiseConv2d,
)

KEY, OTHER = Key.from_seed(11), Key.from_seed(12)
MODES = ("input", "features", "deformable")


def slow_taps(in_hw, out_hw, k, s, p, d, in_perm, out_perm):
    """Loop reference for window_taps: where each tap of each scrambled output cell is read."""
    hin, win = in_hw
    hout, wout = out_hw
    inv = {int(v): i for i, v in enumerate(in_perm)}
    rows = []
    for q in range(hout * wout):
        o = int(out_perm[q])
        oi, oj = divmod(o, wout)
        row = []
        for u in range(k):
            for v in range(k):
                r, c = oi * s - p + u * d, oj * s - p + v * d
                row.append(inv[r * win + c] if 0 <= r < hin and 0 <= c < win else hin * win)
        rows.append(row)
    return torch.tensor(rows)


# -- kernels ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_permute_positions_matches_loop(channels_last):
    x = torch.rand(2, 5, 4, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    y = permute_positions(x, perm, keep_format=True)
    assert torch.equal(y, scramble(x, perm))
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("k,s,p,d,hw", [(3, 1, 1, 1, (5, 7)), (3, 2, 1, 1, (6, 6)), (1, 2, 0, 1, (6, 4)),
                                        (3, 1, 2, 2, (5, 5)), (5, 2, 2, 1, (7, 9))])
def test_window_taps_match_loop(k, s, p, d, hw):
    g = torch.Generator().manual_seed(1)
    hout = (hw[0] + 2 * p - d * (k - 1) - 1) // s + 1
    wout = (hw[1] + 2 * p - d * (k - 1) - 1) // s + 1
    pin, pout = torch.randperm(hw[0] * hw[1], generator=g), torch.randperm(hout * wout, generator=g)
    taps = window_taps(conv_window(hw[0], hout, k, s, p, d), conv_window(hw[1], wout, k, s, p, d), hw,
                       in_perm=pin, out_perm=pout)
    assert torch.equal(taps, slow_taps(hw, (hout, wout), k, s, p, d, pin, pout))


@pytest.mark.parametrize("groups,cin,cout", [(1, 4, 6), (2, 4, 6), (4, 4, 4), (4, 4, 8)])
@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (1, 2, 0, 1)])
def test_gather_conv_equals_deform_conv2d_and_conv2d(groups, cin, cout, k, s, p, d):
    g = torch.Generator().manual_seed(2)
    hw = (6, 5)
    x = torch.rand(3, cin, *hw, generator=g)
    weight = torch.randn(cout, cin // groups, k, k, generator=g)
    bias = torch.randn(cout, generator=g)
    ref = F.conv2d(x, weight, bias, stride=s, padding=p, dilation=d, groups=groups)
    hout, wout = ref.shape[-2:]
    pin, pout = torch.randperm(30, generator=g), torch.randperm(hout * wout, generator=g)
    taps = window_taps(conv_window(hw[0], hout, k, s, p, d), conv_window(hw[1], wout, k, s, p, d), hw,
                       in_perm=pin, out_perm=pout)
    xs = scramble(x, pin)
    fast = gather_conv2d(xs, taps, weight, bias, out_hw=(hout, wout), groups=groups, chunk_rows=37)
    off = taps_to_offsets(taps, hw, (hout, wout), (k, k), (s, s), (p, p), (d, d))
    reference = deform_conv2d(xs, off.expand(3, -1, -1, -1), weight, bias, stride=s, padding=p, dilation=d)
    assert (fast - reference).abs().max() < 1e-5
    assert (fast - scramble(ref, pout)).abs().max() < 1e-5


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2), nn.AvgPool2d(2),
                                  nn.AvgPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                                  nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.AdaptiveAvgPool2d((3, 4)), nn.AdaptiveMaxPool2d(2)])
def test_deformable_pool_matches_plain_pool(pool):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 9, generator=g)
    ref = pool(x)
    hout, wout = ref.shape[-2:]
    pin, pout = torch.randperm(63, generator=g), torch.randperm(hout * wout, generator=g)
    layer = DeformablePool2d(pool, in_hw=(7, 9), out_hw=(hout, wout), in_perm=pin, out_perm=pout)
    assert (layer(scramble(x, pin)) - scramble(ref, pout)).abs().max() < 1e-6


def test_adaptive_window_matches_pytorch_rule():
    pos, valid = adaptive_window(7, 3)
    windows = [pos[i][valid[i]].tolist() for i in range(3)]
    assert windows == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]


def test_gather_pool_max_pads_with_minus_inf():
    x = -torch.ones(1, 1, 2, 2)  # all negative: a zero padding tap would win
    taps = window_taps(conv_window(2, 2, 3, 1, 1, 1), conv_window(2, 2, 3, 1, 1, 1), (2, 2),
                       in_perm=None, out_perm=None)
    assert torch.equal(gather_pool2d(x, taps, out_hw=(2, 2), reduce="max"), x)


# -- small custom CNNs (what the demo uses) -----------------------------------------------------------


def small_cnn(in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 7 * 7, 10),
    ).eval()


@pytest.mark.parametrize("mode", MODES)
def test_small_cnn_fashion_size_every_mode(mode):
    net = small_cnn()
    x = torch.rand(3, 1, 28, 28)
    y = schemes.create("pixel", KEY).encrypt(x)
    km = keyed(net, KEY, mode=mode, input_size=(1, 28, 28))
    with torch.no_grad():
        ref = net(x)
        assert (km(y) - ref).abs().max() < 1e-5
        assert (km(y[:1]) - ref[:1]).abs().max() < 1e-5  # any batch size
        wrong = keyed(net, OTHER, mode=mode, input_size=28, check=False)(y)
    assert (wrong - ref).abs().max() > 1e-2
    assert km.keyveil_config.key_fingerprint == KEY.fingerprint
    for p_plain, p_keyed in zip(net.parameters(), km.parameters()):  # the plain model is untouched and not shared
        assert p_plain.data_ptr() != p_keyed.data_ptr()


@pytest.mark.parametrize("mode", MODES)
def test_pixel_np_keyed_model_undoes_the_flips_and_survives_a_checkpoint(mode, tmp_path):
    from keyveil.models import load_keyed, save_keyed

    net = small_cnn()
    scheme = schemes.create("pixel-np", KEY)
    x = torch.rand(3, 1, 28, 28)
    y = scheme.encrypt(x)
    assert not torch.allclose(y.sort(-1).values, schemes.create("pixel", KEY).encrypt(x).sort(-1).values)
    km = keyed(net, KEY, scheme=scheme, mode=mode, input_size=(1, 28, 28))
    with torch.no_grad():
        ref = net(x)
        assert (km(y) - ref).abs().max() < 1e-5
        # the same permutation without the flips is not enough: the flips must be undone
        assert (keyed(net, KEY, mode=mode, input_size=28)(y) - ref).abs().max() > 1e-2
        save_keyed(km, tmp_path / "k.pt")
        again = load_keyed(tmp_path / "k.pt", small_cnn(), key=KEY)
        assert (again(y) - ref).abs().max() < 1e-5


def test_features_mode_structure():
    km = keyed(small_cnn(), KEY, mode="features", input_size=(1, 28, 28))
    mods = dict(km.named_modules())
    assert isinstance(mods["12"], FoldedLinear)  # Linear after flatten: columns folded
    nodes = {n.name: n for n in km.graph.nodes}
    one_by_one = nodes["_8"]  # the 1x1 stride-1 conv reads the scrambled map directly
    assert one_by_one.op == "call_module" and one_by_one.target == "8"
    assert not str(one_by_one.args[0].target).startswith("keyveil_unscramble")
    assert sum(isinstance(m, PositionPermutation) for m in mods.values()) == 8  # 4 spatial ops x (in, out)


def test_strided_pointwise_conv_is_one_gather():
    """A ResNet-style shortcut (1x1, stride 2) reads the scrambled input directly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 1, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 5 * 4, 3)).eval()
    km = keyed(net, KEY, mode="features", input_size=(2, 9, 7))
    layer = km.get_submodule("2")
    assert isinstance(layer, StridedPointwiseConv2d)
    pin, pout = feature_permutation(KEY, 9, 7, input_hw=(9, 7)), feature_permutation(KEY, 5, 4, input_hw=(9, 7))
    x = torch.rand(2, 4, 9, 7)
    ref = scramble(net[2](x), pout)
    assert (layer(scramble(x, pin)) - ref).abs().max() < 1e-6
    y = torch.rand(3, 2, 9, 7)
    assert (km(schemes.create("pixel", KEY).encrypt(y)) - net(y)).abs().max() < 1e-5


def test_training_mode_matches_too():
    """BatchNorm in train mode uses batch statistics, which a permutation does not change."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).train()
    km = keyed(net, KEY, mode="deformable", input_size=(1, 9, 9))
    assert km.training
    x = torch.rand(4, 1, 9, 9)
    out = km(schemes.create("pixel", KEY).encrypt(x))
    assert (out - net(x)).abs().max() < 1e-5
    out.sum().backward()  # gradients flow to the (copied) weights
    assert km.get_submodule("0").weight.grad is not None


def test_deform_conv2d_kernel_equals_gather_kernel():
    net = small_cnn(3)
    y = torch.rand(2, 3, 28, 28)
    a = keyed(net, KEY, mode="deformable", input_size=(3, 28, 28))
    b = keyed(net, KEY, mode="deformable", input_size=(3, 28, 28), kernel="deform_conv2d")
    assert any(isinstance(m, DeformableConv2d) and m.kernel == "deform_conv2d" for m in b.modules())
    with torch.no_grad():
        assert (a(y) - b(y)).abs().max() < 1e-5


def test_buffers_move_with_to_and_wrong_size_is_refused():
    km = keyed(small_cnn(), KEY, mode="deformable", input_size=(1, 28, 28))
    moved = km.to("meta")
    assert all(b.device.type == "meta" for b in moved.buffers())
    km2 = keyed(small_cnn(), KEY, mode="features", input_size=(1, 28, 28))
    with pytest.raises(ValueError, match="input_size it was converted for"):
        km2(torch.rand(1, 1, 32, 32))


def test_input_size_is_required_and_per_channel_refused():
    with pytest.raises(ValueError, match="input_size"):
        keyed(small_cnn(), KEY)
    with pytest.raises(ValueError, match="per_channel"):
        keyed(small_cnn(), KEY, scheme=schemes.create("pixel", KEY, per_channel=True), input_size=28)


# -- torchvision models ----------------------------------------------------------------------------------

ARCHS = ["vgg16_bn", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0",
         "densenet121", "efficientnet_b0", "regnet_y_400mf"]
_MODELS: dict[str, nn.Module] = {}


def tv_model(arch: str) -> nn.Module:
    if arch not in _MODELS:
        torch.manual_seed(0)
        _MODELS[arch] = torchvision.models.get_model(arch, num_classes=10).eval()
    return _MODELS[arch]


def check_arch(arch: str, hw: tuple[int, int], modes=MODES) -> None:
    net = tv_model(arch)
    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(4))
    y = schemes.create("pixel", KEY).encrypt(x)
    with torch.no_grad():
        ref = net(x)
        x2 = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(5))
        spread = (net(x2) - ref).abs().max()  # how much the logits move between two images
        for mode in modes:
            km = keyed(net, KEY, mode=mode, input_size=hw, check=False)
            assert (km(y) - ref).abs().max() <= 1e-4, (arch, hw, mode)
            if mode != "input":  # the wrong key's model sees a differently scrambled image
                wrong = keyed(net, OTHER, mode=mode, input_size=hw, check=False)(y)
                assert (wrong - ref).abs().max() > 0.05 * spread, (arch, hw, mode)


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_every_mode_32(arch):
    check_arch(arch, (32, 32))


@pytest.mark.parametrize("arch", ["resnet18", "shufflenet_v2_x1_0", "mobilenet_v3_small"])
@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_torchvision_other_sizes(arch, hw):
    check_arch(arch, hw)


def test_wrong_key_input_mode_differs():
    net = tv_model("resnet18")
    x = torch.rand(1, 3, 32, 32)
    y = schemes.create("pixel", KEY).encrypt(x)
    with torch.no_grad():
        d = (keyed(net, OTHER, mode="input", input_size=32, check=False)(y) - net(x)).abs().max()
    assert d > 1e-3


# -- validator ---------------------------------------------------------------------------------------------


class Interp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        x = F.interpolate(x, size=(10, 10), mode="bilinear")
        x = torch.roll(x, 1, dims=-1)
        return self.fc(self.up(x).mean((2, 3)))


def test_validator_lists_every_problem_in_one_error():
    problems = validate(Interp(), (3, 8, 8))
    assert [p.op for p in problems] == ["torch.nn.functional.interpolate"]  # downstream ops are not re-reported
    with pytest.raises(UnsupportedModelError) as info:
        keyed(Interp(), KEY, input_size=(3, 8, 8))
    msg = str(info.value)
    assert "interpolate" in msg and "resize the input before encrypting" in msg
    assert "mode='input' works for any model" in msg
    for mode in ("features", "deformable"):
        with pytest.raises(UnsupportedModelError):
            keyed(Interp(), KEY, mode=mode, input_size=(3, 8, 8))
    # input mode is exact for any model
    x = torch.rand(2, 3, 8, 8)
    km = keyed(Interp(), KEY, mode="input", input_size=(3, 8, 8), check=False)
    net = Interp()
    net.load_state_dict(km.model.state_dict())
    assert torch.allclose(km(schemes.create("pixel", KEY).encrypt(x)), net(x), atol=1e-6)


class TwoProblems(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(1, 4, 8, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        u = self.a(x) + self.bias  # a spatial constant: its layout is not the key's
        v = self.b(x).transpose(2, 3)  # moves the spatial axes
        return self.fc(torch.cat((u.mean((2, 3)), v.mean((2, 3))), 1))


def test_validator_collects_independent_problems():
    problems = validate(TwoProblems(), (3, 8, 8))
    assert sorted(p.op for p in problems) == ["Tensor.transpose", "_operator.add"]
    assert "spatial constant" in str(problems[0]) and "moves the spatial axes" in str(problems[1])
    with pytest.raises(UnsupportedModelError, match="2 problem"):
        validate(TwoProblems(), (3, 8, 8), strict=True)


def test_swin_is_refused_clearly():
    torch.manual_seed(0)
    swin = torchvision.models.swin_t(num_classes=10).eval()
    with pytest.raises(UnsupportedModelError) as info:
        keyed(swin, KEY, input_size=(3, 32, 32), check=False)
    assert "SwinTransformer" in str(info.value) and "moves the spatial axes" in str(info.value)
