"""A keyed model is the key: ``key-from-model`` reads or probes the pixel key out of keyed CNNs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from keyveil import Key, schemes
from keyveil.attacks import AttackError, KeyFromModel, create_attack, layout_from_taps, offsets_to_taps
from keyveil.attacks.report import security_report
from keyveil.attacks.scenarios import SCENARIOS, make_scheme, run_scenario
from keyveil.engine import build_model
from keyveil.keys import InsecureKeyWarning
from keyveil.models import keyed, load_keyed, save_keyed
from keyveil.models.functional import conv_window, taps_to_offsets, window_taps

HW = (12, 10)  # non-square on purpose
MODES = ("input", "features", "deformable")


@pytest.fixture(scope="module")
def key() -> Key:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return Key.from_seed(11)


def plain(channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return build_model("smallcnn", in_channels=channels, num_classes=3, image_size=HW, width=12, hidden=8).eval()


def images(channels: int = 1, n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, *HW), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["buffers", "probe"])
def test_recovers_the_key_exactly_in_every_mode(key, mode, method, channels):
    pixel = schemes.create("pixel", key)
    knet = keyed(plain(channels), key, mode=mode, input_size=(channels, *HW))
    x = images(channels)
    enc = pixel.encrypt(x)
    r = KeyFromModel(method=method).run(model=knet, reference=pixel, ciphertexts=enc)
    assert r.metrics["fraction_recovered"] == 1.0
    assert r.recovered.spatial and r.recovered.shape == (channels, *HW)
    assert torch.equal(r.recovered.index, pixel.permutation(*HW))
    assert torch.equal(r.reconstructions, x)  # bit-exact, uint8
    xf = x.float() / 255
    assert torch.equal(r.decrypt(pixel.encrypt(xf)), xf)  # and float
    if method == "probe":
        assert r.cost.queries == 2  # 121 values: one base-256 digit + the black image
        assert r.metrics["max_rounding_error"] < 0.01
    else:
        assert r.cost.queries == 0 and r.details["sources"]
    assert r.details["mode"] == mode


def test_deformable_offsets_alone_give_the_key(key):
    knet = keyed(plain(), key, mode="deformable", input_size=(1, *HW))
    conv = knet.get_submodule("0")
    del conv._buffers["taps"]  # only PrivDL's integer offsets left
    r = KeyFromModel().run(model=knet, reference=schemes.create("pixel", key))
    assert r.metrics["fraction_recovered"] == 1.0
    assert r.details["sources"] == ["0.offset"]


def test_checkpoint_with_key_material_leaks_it_without_does_not(key, tmp_path):
    pixel = schemes.create("pixel", key)
    for mode in MODES:
        knet = keyed(plain(), key, mode=mode, input_size=(1, *HW))
        leaky, safe = tmp_path / f"{mode}-with.pt", tmp_path / f"{mode}-without.pt"
        save_keyed(knet, leaky, include_key_material=True)
        save_keyed(knet, safe)
        r = KeyFromModel().run(model=leaky, reference=pixel)  # the file's tensors, no architecture needed
        assert r.metrics["fraction_recovered"] == 1.0 and r.details["checkpoint_says_key_material"]
        loaded = load_keyed(leaky, plain())  # no key needed to load it, and then...
        for method in ("buffers", "probe"):
            assert KeyFromModel(method=method).run(model=loaded, reference=pixel).metrics["fraction_recovered"] == 1.0
        with pytest.raises(AttackError, match="found no key material in checkpoint.*saved without key material"):
            KeyFromModel().run(model=safe)
        with pytest.raises(AttackError, match="found no key material"):
            KeyFromModel().run(model=torch.load(safe, weights_only=True)["state_dict"], image_size=HW)
        with pytest.raises(AttackError, match="the probe runs the model"):
            KeyFromModel(method="probe").run(model=leaky)


def test_plain_wrong_size_and_unprobeable_models_say_why(key):
    net = plain()
    with pytest.raises(AttackError, match="found no key material"):
        KeyFromModel().run(model=net, image_size=HW)
    with pytest.raises(AttackError, match="not a keyed model"):
        KeyFromModel(method="probe").run(model=net, image_size=HW)
    with pytest.raises(AttackError, match="pass image_size"):
        KeyFromModel().run(model=net)
    knet = keyed(net, key, mode="features", input_size=(1, *HW))
    with pytest.raises(AttackError, match="converted for 12x10 images"):
        KeyFromModel().run(model=knet, image_size=(14, 10))
    del knet.keyveil_config  # no recorded size: the buffers or the forward pass tell
    with pytest.raises(AttackError, match="key buffers for .*12x10.* none for the 14x10"):
        KeyFromModel().run(model=knet, image_size=(14, 10))
    with pytest.raises(AttackError, match="does not run on"):
        KeyFromModel(method="probe").run(model=knet, image_size=(14, 10))
    thin = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 12 * 10, 2)).eval()
    kthin = keyed(thin, key, mode="deformable", input_size=(1, *HW))
    with pytest.raises(AttackError, match="dependent tap weights"):  # 4 channels cannot separate 9 taps
        KeyFromModel(method="probe").run(model=kthin)
    assert KeyFromModel().run(model=kthin, reference=schemes.create("pixel", key)).metrics["fraction_recovered"] == 1


def test_layout_from_taps_ignores_the_output_order_and_refuses_non_overlapping_windows():
    gen = torch.Generator().manual_seed(3)
    h, w = 9, 7
    perm = torch.randperm(h * w, generator=gen)
    for k, s, p in ((3, 1, 1), (3, 2, 1), (5, 2, 2), (2, 1, 0)):
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        out_perm = torch.randperm(ho * wo, generator=gen)
        taps = window_taps(conv_window(h, ho, k, s, p, 1), conv_window(w, wo, k, s, p, 1), (h, w), in_perm=perm,
                           out_perm=out_perm)
        assert torch.equal(layout_from_taps(taps, (h, w), kernel_size=(k, k)), perm)
        off = taps_to_offsets(taps, (h, w), (ho, wo), (k, k), (s, s), (p, p), (1, 1))
        assert torch.equal(offsets_to_taps(off, (h, w), kernel_size=(k, k), stride=(s, s), padding=(p, p),
                                           dilation=(1, 1)), taps)
    taps = window_taps(conv_window(8, 4, 2, 2, 0, 1), conv_window(6, 3, 2, 2, 0, 1), (8, 6),
                       in_perm=torch.randperm(48, generator=gen), out_perm=None)
    with pytest.raises(AttackError, match="does not determine the layout"):
        layout_from_taps(taps, (8, 6), kernel_size=(2, 2))
    with pytest.raises(AttackError, match="1x3 kernel"):
        layout_from_taps(torch.zeros(4, 3, dtype=torch.long), (2, 2), kernel_size=(1, 3))


def test_registered_with_keyword_only_hyperparameters():
    assert isinstance(create_attack("key-from-model", method="probe"), KeyFromModel)
    with pytest.raises(TypeError):
        KeyFromModel("probe")  # type: ignore[misc]
    with pytest.raises(AttackError, match="method must be one of"):
        KeyFromModel(method="logits")
    assert "key-from-model" in SCENARIOS


def test_scenario_and_report_section(key, fashion):
    pixel = make_scheme("pixel", fashion, key)
    sc = run_scenario("key-from-model", pixel, fashion, test_n=4,
                      options={"mode": "deformable", "method": "probe", "checkpoint": True})
    assert sc.result.metrics["fraction_recovered"] == 1.0 and sc.result.metrics["decrypted_exactly"] == 1.0
    assert torch.equal(sc.recovered, sc.originals) and sc.settings["source"] == "checkpoint"
    with pytest.raises(AttackError, match="pixel scheme"):
        run_scenario("key-from-model", make_scheme("etc", fashion, key), fashion, test_n=2)
    md, rows = security_report(sections=("key-from-model",), pictures=None, quick=True)
    held = [r for r in rows if "default checkpoint" in r.data or "smoothness of its weights" in r.data]
    assert len(held) == 2 and all(r.verdict == "holds" for r in held)  # no key material / the weights fail
    assert len(rows) >= 16 and all(r.verdict.startswith("**broken**") for r in rows if r not in held)
    assert "Who must not hold a keyed model" in md and "A keyed model is the key" in md


def test_attack_command(tmp_path, capsys, fashion):
    from keyveil.cli import main

    out = tmp_path / "mk.png"
    assert main(["attack", "--attack", "key-from-model", "--scheme", "pixel", "--dataset", fashion,
                 "--test-n", "3", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fraction_recovered             1.0000" in text and "decrypted_exactly              1.0000" in text
    assert out.exists()
