"""``key-from-model`` on the keyed ViT, the keyed detector, ``pixel-np`` and compositions ending in ``pixel``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from keyveil import Key, schemes
from keyveil.attacks import AttackError, KeyFromModel
from keyveil.attacks.scenarios import make_scheme, run_scenario
from keyveil.engine import build_model
from keyveil.engine.detection import build_detector
from keyveil.engine.models import _vit
from keyveil.keys import InsecureKeyWarning
from keyveil.models import keyed, save_keyed
from keyveil.models.keyed_detection import keyed_detector


def _key(seed: int) -> Key:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return Key.from_seed(seed)


def _images(n: int, hw: tuple[int, int]) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _smooth_vit() -> nn.Module:
    """A 12x12 ViT (4-px patches) whose patch and position embeddings are smooth in space, as training leaves them."""
    torch.manual_seed(0)
    net = _vit(layers=1, heads=2, hidden=32, mlp=32, in_channels=1, num_classes=4, image_size=(12, 12), patch_size=4)

    def bumps(side: int, e: int) -> torch.Tensor:  # (e, side*side): Gaussian bumps at random centres
        centre = torch.rand(e, 2) * (side - 1)
        r, c = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
        d2 = (r.reshape(1, -1) - centre[:, :1]) ** 2 + (c.reshape(1, -1) - centre[:, 1:]) ** 2
        return torch.exp(-d2 / 2)

    with torch.no_grad():
        net.conv_proj.weight.copy_(bumps(4, 32).reshape(32, 1, 4, 4))
        net.encoder.pos_embedding[0, 1:].copy_(bumps(3, 32).T)
        nn.init.normal_(net.heads.head.weight)  # torchvision starts the head at zero
    return net.eval()


@pytest.mark.parametrize("where", ["model", "checkpoint"])
def test_vit_buffers_give_the_exact_key(tmp_path, where):
    key = _key(3)
    vit = schemes.create("vit", key, block_size=4)
    knet = keyed(_smooth_vit(), key, scheme=vit)
    target = knet
    if where == "checkpoint":
        target = tmp_path / "k.pt"
        save_keyed(knet, target, include_key_material=True)
    x = _images(4, (12, 12))
    r = KeyFromModel().run(model=target, reference=vit, ciphertexts=vit.encrypt(x))
    assert r.metrics["fraction_recovered_with_flips"] == 1.0
    assert torch.equal(r.reconstructions, x)
    # negative control: the same ViT keyed with another key does not give the victim's key
    other = keyed(_smooth_vit(), _key(4), scheme=schemes.create("vit", _key(4), block_size=4))
    assert KeyFromModel().run(model=other, reference=vit).metrics["fraction_recovered"] < 0.2


def test_vit_weights_smoothness_recovers_the_key_and_a_default_checkpoint_gives_nothing(tmp_path):
    key = _key(3)
    vit = schemes.create("vit", key, block_size=4)
    plain = _smooth_vit()
    knet = keyed(plain, key, scheme=vit)
    public = _images(8, (12, 12))
    with torch.no_grad():
        labels = plain(public.float() / 255).argmax(1)
    r = KeyFromModel(method="weights", seconds=1.0).run(model=knet, reference=vit, plain=public, labels=labels)
    # smoothness gives the key up to the grid's symmetries and a global flip: the exact key is a candidate, and
    # the layouts are exact up to them (this random-headed toy model is too weak to pick the candidate)
    assert r.metrics["fraction_recovered_best_candidate"] == 1.0
    assert r.details["loss_chosen"] <= r.details["loss_worst"]
    safe = tmp_path / "safe.pt"
    save_keyed(knet, safe)  # the default: plain weights, no key material
    for method in ("buffers", "weights"):
        with pytest.raises(AttackError, match="no key material|plain order"):
            KeyFromModel(method=method, seconds=1.0).run(model=safe)
    # negative control: untrained (random, not smooth) weights do not give the key away
    rough = keyed(_vit(layers=1, heads=2, hidden=32, mlp=32, in_channels=1, num_classes=4, image_size=(12, 12),
                       patch_size=4).eval(), key, scheme=vit)
    r = KeyFromModel(method="weights", seconds=1.0).run(model=rough, reference=vit)
    assert r.metrics["fraction_recovered"] < 0.3


@pytest.mark.parametrize("scheme", ["pixel", "pixel-np"])
@pytest.mark.parametrize("method", ["buffers", "probe"])
def test_keyed_detector_gives_the_exact_key(tmp_path, scheme, method):
    torch.manual_seed(0)
    det = build_detector(num_classes=3, in_channels=1)
    key = _key(5)
    sch = schemes.create(scheme, key)
    kdet = keyed_detector(det, key, scheme=scheme, input_size=(1, 32, 32))
    x = _images(3, (32, 32))
    r = KeyFromModel(method=method).run(model=kdet, reference=sch, ciphertexts=sch.encrypt(x))
    assert r.metrics.get("fraction_recovered_with_flips", r.metrics["fraction_recovered"]) == 1.0
    assert torch.equal(r.reconstructions, x)
    if method == "buffers":
        save_keyed(kdet, tmp_path / "leaky.pt", include_key_material=True)
        assert KeyFromModel().run(model=tmp_path / "leaky.pt", reference=sch).metrics["fraction_recovered"] == 1.0
        save_keyed(kdet, tmp_path / "safe.pt")
        with pytest.raises(AttackError, match="no key material"):
            KeyFromModel().run(model=tmp_path / "safe.pt")
    other = keyed_detector(det, _key(6), scheme=scheme, input_size=(1, 32, 32))
    assert KeyFromModel(method=method).run(model=other, reference=sch).metrics["fraction_recovered"] < 0.05


@pytest.mark.parametrize("method", ["buffers", "probe"])
def test_pixel_np_cnn_gives_permutation_and_flips(method):
    key = _key(7)
    sch = schemes.create("pixel-np", key)
    torch.manual_seed(0)
    net = build_model("smallcnn", in_channels=1, num_classes=3, image_size=(12, 10)).eval()
    x = _images(3, (12, 10))
    r = KeyFromModel(method=method).run(model=keyed(net, key, scheme=sch, input_size=(1, 12, 10)), reference=sch,
                                        ciphertexts=sch.encrypt(x))
    assert r.metrics["fraction_recovered_with_flips"] == 1.0 and torch.equal(r.reconstructions, x)


@pytest.mark.parametrize("name,options", [
    ("pixel-np", {}), ("vit", {}), ("vit", {"checkpoint": True}), ("visualmixer-seed+pixel", {"method": "probe"}),
    ("pixel", {"model": "detector"}),
])
def test_scenarios_recover_the_key(name, options):
    sc = run_scenario("key-from-model", make_scheme(name, "fashion-mnist", _key(0)), "fashion-mnist", test_n=4,
                      options=dict(options))
    assert sc.result.metrics["fraction_recovered"] == 1.0 and sc.result.metrics["decrypted_exactly"] == 1.0


def test_scenario_default_checkpoint_is_a_refusal():
    sc = run_scenario("key-from-model", make_scheme("vit", "fashion-mnist", _key(0)), "fashion-mnist", test_n=4,
                      options={"checkpoint": "plain"})
    assert sc.result.metrics["refused"] == 1.0 and sc.result.metrics["fraction_recovered"] == 0.0
    assert sc.recovered is None
    with pytest.raises(AttackError, match="keyed model|cannot be folded"):
        run_scenario("key-from-model", make_scheme("etc", "fashion-mnist", _key(0)), "fashion-mnist", test_n=2)
