"""Saving keyed models with or without key material, and ``keyveil convert``."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from keyveil import Key, schemes
from keyveil.cli import main
from keyveil.models import KeyedModelError, keyed, load_keyed, save_keyed
from keyveil.models.checkpoint import plain_state_dict, read_checkpoint

KEY, OTHER = Key.from_seed(31), Key.from_seed(32)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 5)).eval()


@pytest.mark.parametrize("mode", ["input", "features", "deformable"])
def test_plain_state_dict_is_exactly_the_plain_models(mode):
    net = small_cnn()
    km = keyed(net, KEY, mode=mode, input_size=(1, 16, 16))
    state = plain_state_dict(km)
    ref = net.state_dict()
    assert sorted(state) == sorted(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)


@pytest.mark.parametrize("mode", ["features", "deformable"])
def test_save_without_key_material_and_rekey(tmp_path, mode):
    km = keyed(small_cnn(), KEY, mode=mode, input_size=(1, 16, 16))
    meta = save_keyed(km, tmp_path / "k.pt")
    assert meta["contains_key_material"] is False and meta["key_fingerprint"] == KEY.fingerprint
    payload = read_checkpoint(tmp_path / "k.pt")
    assert not any(k.endswith(("index", "taps", "offset", "divisor")) for k in payload["state_dict"])
    with pytest.raises(KeyedModelError, match="holds no key material"):
        load_keyed(tmp_path / "k.pt", small_cnn())
    with pytest.raises(KeyedModelError, match="wrong key"):
        load_keyed(tmp_path / "k.pt", small_cnn(), key=OTHER)
    again = load_keyed(tmp_path / "k.pt", small_cnn().apply(_scramble_weights), key=KEY)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), km(x))


def _scramble_weights(m: nn.Module) -> None:
    for p in m.parameters(recurse=False):
        p.data.normal_()  # the loaded weights must come from the checkpoint


def test_save_with_key_material_loads_without_key(tmp_path):
    km = keyed(small_cnn(), KEY, mode="features", input_size=(1, 16, 16))
    meta = save_keyed(km, tmp_path / "k.pt", include_key_material=True)
    assert meta["contains_key_material"] is True and meta["key_fingerprint"] == KEY.fingerprint
    again = load_keyed(tmp_path / "k.pt", small_cnn().apply(_scramble_weights))
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), km(x))
    assert again.keyveil_config.key_fingerprint == KEY.fingerprint


def test_vit_checkpoint_round_trip(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    def vit():
        torch.manual_seed(0)
        v = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=4).eval()
        nn.init.normal_(v.heads.head.weight)
        return v

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    km = keyed(vit(), KEY, scheme="vit", mean=mean, std=std)
    state = plain_state_dict(km)
    ref = vit().state_dict()
    assert sorted(state) == sorted(ref)
    assert all(torch.allclose(state[k], ref[k], atol=1e-6) for k in ref)
    save_keyed(km, tmp_path / "v.pt")
    again = load_keyed(tmp_path / "v.pt", vit(), key=KEY)
    y = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert (again(y) - km(y)).abs().max() < 1e-5


def test_not_a_keyed_checkpoint(tmp_path):
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(KeyedModelError, match="not a keyed-model checkpoint"):
        load_keyed(tmp_path / "plain.pt", small_cnn(), key=KEY)


def test_cli_convert(tmp_path, capsys):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7).eval()
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "plain.pt")
    KEY.save(tmp_path / "key.json")
    rc = main(["convert", "--checkpoint", str(tmp_path / "plain.pt"), "--model", "resnet18", "--key",
               str(tmp_path / "key.json"), "--scheme", "pixel", "--keyed", "features", "--input-size", "32", "32",
               "--with-key-material", "-o", str(tmp_path / "keyed.pt")])
    out = capsys.readouterr().out
    assert rc == 0 and "contains key material" in out and KEY.fingerprint in out
    payload = read_checkpoint(tmp_path / "keyed.pt")
    assert payload["contains_key_material"] and payload["config"]["arch"] == "resnet18"
    km = load_keyed(tmp_path / "keyed.pt")  # architecture rebuilt from the metadata, no key needed
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (km(schemes.create("pixel", KEY).encrypt(x)) - net(x)).abs().max() < 1e-4
    rc = main(["convert", "--checkpoint", str(tmp_path / "plain.pt"), "--model", "resnet18", "--key",
               str(tmp_path / "key.json"), "-o", str(tmp_path / "k2.pt")])
    assert rc == 2 and "input_size" in capsys.readouterr().err
