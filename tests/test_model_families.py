"""The seeds' model families built for small inputs, and user-supplied weights (keyveil.engine.models)."""

import pytest
import torch
from torch import nn

from keyveil.engine import SEED_FAMILIES, build_model, load_weights, torchvision_model
from keyveil.engine.models import SWIN_WINDOW, TRANSFORMER_PATCH


@pytest.mark.parametrize("arch", SEED_FAMILIES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_seed_family_gives_logits_for_small_inputs(arch, shape):
    c, h, w = shape
    torch.manual_seed(0)
    m = build_model(arch, in_channels=c, num_classes=7, image_size=(h, w)).eval()
    first = next(mod for mod in m.modules() if isinstance(mod, nn.Conv2d))
    assert first.in_channels == c
    out = m(torch.rand(3, c, h, w))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    assert all(p.device.type == "cpu" for p in m.parameters()) and all(b.device.type == "cpu" for b in m.buffers())


def test_transformers_get_small_patches_and_windows():
    vit = build_model("vit_mini", in_channels=1, num_classes=10, image_size=(32, 32))
    assert vit.patch_size == TRANSFORMER_PATCH and vit.seq_length == (32 // TRANSFORMER_PATCH) ** 2 + 1
    swin = torchvision_model("swin_t", in_channels=3, num_classes=10, image_size=(32, 32), small_input=True)
    assert swin.features[0][0].stride == (TRANSFORMER_PATCH, TRANSFORMER_PATCH)
    attn = swin.features[1][0].attn
    assert list(attn.window_size) == [SWIN_WINDOW, SWIN_WINDOW]
    # Swin-T's depths (2, 2, 6, 2) and widths (96 doubling per stage) are kept
    assert [len(stage) for stage in swin.features[1::2]] == [2, 2, 6, 2]
    assert [stage[0].norm1.normalized_shape[0] for stage in swin.features[1::2]] == [96, 192, 384, 768]
    big = build_model("swin_t", in_channels=3, num_classes=10, image_size=(224, 224))
    assert big.features[0][0].stride == (4, 4) and list(big.features[1][0].attn.window_size) == [7, 7]


def test_vgg_small_input_features_are_initialized_as_torchvision_does():
    m = build_model("vgg11_bn", in_channels=3, num_classes=10, image_size=(32, 32))
    convs = [mod for mod in m.features if isinstance(mod, nn.Conv2d)]
    bns = [mod for mod in m.features if isinstance(mod, nn.BatchNorm2d)]
    fan_out = convs[1].out_channels * 9
    assert abs(float(convs[1].weight.detach().std()) - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    assert all(float(b.running_var.min()) == 1.0 and float(b.running_mean.abs().max()) == 0.0 for b in bns)
    assert isinstance(m.classifier, nn.Linear) and m.classifier.in_features == 512


def test_vit_needs_square_divisible_images():
    with pytest.raises(ValueError, match="square"):
        build_model("vit_mini", in_channels=1, num_classes=10, image_size=(32, 28))
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model("vit_mini", in_channels=1, num_classes=10, image_size=(30, 30))


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError) as err:
        build_model("no_such_net", in_channels=1, num_classes=2, image_size=(28, 28))
    msg = str(err.value)
    for name in (*SEED_FAMILIES, "smallcnn", "convnext_tiny", "efficientnet_b0"):
        assert name in msg


def test_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    a = build_model("smallcnn", in_channels=1, num_classes=5, image_size=(28, 28)).eval()
    torch.manual_seed(2)
    b = build_model("smallcnn", in_channels=1, num_classes=5, image_size=(28, 28)).eval()
    x = torch.rand(2, 1, 28, 28)
    assert not torch.equal(a(x), b(x))
    torch.save(a.state_dict(), tmp_path / "w.pt")
    assert torch.equal(load_weights(b, tmp_path / "w.pt")(x), a(x))
    # a keyveil checkpoint and a DDP-prefixed state_dict load too
    torch.save({"model_state": a.state_dict(), "epoch": 1}, tmp_path / "ckpt.pt")
    torch.save({f"module.{k}": v for k, v in a.state_dict().items()}, tmp_path / "ddp.pt")
    for name in ("ckpt.pt", "ddp.pt"):
        c = build_model("smallcnn", in_channels=1, num_classes=5, image_size=(28, 28),
                        weights=tmp_path / name).eval()
        assert torch.equal(c(x), a(x))


def test_mismatched_weights_say_what_differs(tmp_path):
    torch.save(build_model("smallcnn", in_channels=1, num_classes=5, image_size=(28, 28)).state_dict(),
               tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"shape \(file vs model\): .*\(5, 128\) vs \(10, 128\).*same --model"):
        build_model("smallcnn", in_channels=1, num_classes=10, image_size=(28, 28), weights=tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"missing: .*unexpected: "):
        build_model("vit_mini", in_channels=1, num_classes=5, image_size=(28, 28), weights=tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_weights(nn.Linear(2, 2), tmp_path / "none.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        load_weights(nn.Linear(2, 2), tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(ValueError, match="not a PyTorch state_dict"):
        load_weights(nn.Linear(2, 2), tmp_path / "junk.pt")


def test_train_cli_starts_from_weights_and_rejects_mismatched_ones(tmp_path, capsys):
    from keyveil.cli import main

    torch.manual_seed(3)
    w = build_model("smallcnn", in_channels=1, num_classes=10, image_size=(28, 28))
    torch.save(w.state_dict(), tmp_path / "w.pt")
    args = ["train", "--dataset", "mnist5k", "--limit", "32", "--test-limit", "16", "--epochs", "1", "--quiet",
            "--model", "smallcnn", "-o", str(tmp_path / "m.pt")]
    assert main([*args, "--weights", str(tmp_path / "w.pt"), "--lr", "1e-12"]) == 0
    state = torch.load(tmp_path / "m.pt", weights_only=False)
    assert state["init_weights"] == str(tmp_path / "w.pt")
    # a learning rate of 1e-12 leaves the loaded weights (the first conv) essentially unchanged
    assert torch.allclose(state["model_state"]["0.weight"], w.state_dict()["0.weight"], atol=1e-6)
    assert main([*args, "--model", "vit_mini", "--weights", str(tmp_path / "w.pt")]) != 0
    assert "does not fit this VisionTransformer" in capsys.readouterr().err


def test_small_input_batchnorm_follows_short_trainings():
    small = build_model("mobilenet_v3_small", in_channels=1, num_classes=10, image_size=(32, 32))
    big = build_model("mobilenet_v3_small", in_channels=3, num_classes=10, image_size=(224, 224))
    momenta = [m.momentum for m in small.modules() if isinstance(m, nn.BatchNorm2d)]
    assert momenta and min(momenta) == 0.1
    assert {m.momentum for m in big.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}  # torchvision's own
