"""``block-per-image`` (a fresh key per image) and ``vit+patch`` (keyed in-patch step + fresh patch order),
with the models that follow them exactly."""

from __future__ import annotations

import pytest
import torch

from keyveil import Key, schemes
from keyveil.attacks.jigsaw import dihedral
from keyveil.models import block_invariant_vit, keyed, patch_invariant_vit
from keyveil.models.errors import KeyedModelError
from keyveil.schemes import NotInvertibleError, SchemeError


def _images(shape, seed=0, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 255


def _blocks(img, m):
    c, h, w = img.shape
    return img.reshape(c, h // m, m, w // m, m).permute(1, 3, 0, 2, 4).reshape(-1, c, m, m)


def test_block_per_image_roundtrip_with_key_and_nonce_fresh_without():
    s = schemes.create("block-per-image", Key.generate(), block_size=4)
    x = _images((3, 3, 16, 16))
    y = s.encrypt(x, nonce=[1, 2, 3])
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.equal(y, x)
    assert torch.equal(s.decrypt(y, nonce=[1, 2, 3]), x)
    assert not torch.equal(s.decrypt(y, nonce=[1, 2, 4])[2], x[2])  # another image's key does not decrypt it
    assert torch.equal(s.decrypt(y, nonce=[1, 2, 4])[:2], x[:2])  # ... and keys are per image
    assert not torch.equal(s.encrypt(x), s.encrypt(x))  # fresh per call
    keyless = schemes.create("block-per-image", block_size=4)
    with pytest.raises(NotInvertibleError, match="nonce"):
        keyless.decrypt(y)
    with pytest.raises(SchemeError, match="needs the nonce"):
        s.decrypt(y)
    with pytest.raises(SchemeError, match="divisible"):
        s.encrypt(_images((1, 1, 18, 16)))


def test_block_per_image_moves_turns_and_negates_whole_blocks():
    """Every encrypted block is one plain block under one of the 16 transforms; an in-block shuffle is not."""
    m = 4
    x = _images((1, 1, 16, 16), seed=3)[0]
    s = schemes.create("block-per-image", block_size=m)
    y = s.encrypt(x, generator=torch.Generator().manual_seed(0))

    def orbit(b):
        return {t.numpy().tobytes() for k in range(8) for t in (dihedral(b, k), 255 - dihedral(b, k))}

    plain = [orbit(b) for b in _blocks(x, m)]
    enc = _blocks(y, m)
    used = set()
    for b in enc:
        hit = [i for i, o in enumerate(plain) if b.numpy().tobytes() in o and i not in used]
        assert hit
        used.add(hit[0])
    assert len(used) == len(plain)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    shuffled = _blocks(x, m)[0].reshape(1, 16)[:, perm].reshape(1, m, m)  # a pixel shuffle inside a block
    assert shuffled.numpy().tobytes() not in plain[0]
    rot_only = schemes.create("block-per-image", block_size=m, negapos=False).encrypt(x)
    assert torch.equal(rot_only.flatten().sort().values, x.flatten().sort().values)  # turns keep the values


@pytest.mark.parametrize("rotate,negapos", [(True, True), (True, False), (False, True)])
def test_block_invariant_vit_ignores_every_per_image_key(rotate, negapos):
    torch.manual_seed(0)
    net = block_invariant_vit(image_size=16, patch_size=4, in_channels=2, num_classes=5, dim=16, depth=1, heads=2,
                              rotate=rotate, negapos=negapos).eval()
    s = schemes.create("block-per-image", block_size=4, rotate=rotate, negapos=negapos)
    x = _images((4, 2, 16, 16), seed=1, dtype=torch.float32)
    with torch.no_grad():
        ref = net(x)
        for seed in range(3):
            assert torch.allclose(net(s.encrypt(x, generator=torch.Generator().manual_seed(seed))), ref, atol=1e-5)
        # negative control: a pixel shuffle inside the blocks is outside the group
        other = schemes.create("compose", Key.generate(), steps=[("vit", {"block_size": 4, "scramble": False,
                                                                         "negapos": None})])
        assert (net(other.encrypt(x)) - ref).abs().max() > 1e-3


def _inv_vit(**kw):
    torch.manual_seed(0)
    return patch_invariant_vit(image_size=16, patch_size=4, in_channels=3, num_classes=6, dim=16, depth=1, heads=2,
                               **kw).eval()


def test_keyed_invariant_vit_follows_vit_plus_patch_exactly_and_a_wrong_key_fails():
    key = Key.generate()
    scheme = schemes.create("vit+patch", key, steps=[("vit", {"scramble": False, "block_size": 4}),
                                                      ("patch", {"patch_size": 4})])
    net = _inv_vit()
    knet = keyed(net, key, scheme=scheme)
    assert knet.keyveil_config.kind == "inv-vit" and knet.keyveil_config.key_fingerprint == key.fingerprint
    x = _images((8, 3, 16, 16), seed=2, dtype=torch.float32)
    with torch.no_grad():
        ref = net(x)
        for seed in range(2):  # any per-image patch order
            y = scheme.encrypt(x, generator=torch.Generator().manual_seed(seed))
            assert torch.allclose(knet(y), ref, atol=1e-5)
        assert (net(y) - ref).abs().max() > 1e-2  # the plain model does not follow the key
        wrong = keyed(net, Key.generate(), scheme="vit+patch")  # by name: steps sized to the ViT's patches
        assert (wrong(y) - ref).abs().max() > 1e-2
    assert not any(torch.equal(a, b) for a, b in zip(net.parameters(), knet.parameters()) if a.dim() == 4)


def test_keyed_invariant_vit_with_a_learned_position_table_follows_a_block_scramble():
    key = Key.generate()
    net = _inv_vit(position="learned")
    vit = schemes.create("vit", key, block_size=4)  # K1 block scramble + shared shuffle + shared mask
    knet = keyed(net, key, scheme=vit)
    x = _images((4, 3, 16, 16), seed=4, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(knet(vit.encrypt(x)), net(x), atol=1e-5)
    with pytest.raises(KeyedModelError, match="order-invariant"):
        keyed(net, key, scheme="vit+patch")
    with pytest.raises(KeyedModelError, match="per-block|same in-block"):
        keyed(_inv_vit(), key, scheme=schemes.create("etc", key))


def test_scenarios_attack_what_applies_and_say_why_not():
    from keyveil.attacks.base import AttackError
    from keyveil.attacks.scenarios import run_scenario

    bpi = schemes.create("block-per-image", block_size=4)
    for attack, why in (("chosen-plaintext", "no key to recover"), ("known-plaintext", "no key to recover"),
                        ("ciphertext-only", "no fixed layout"), ("key-from-model", "no key in the model")):
        with pytest.raises(AttackError, match=why):
            run_scenario(attack, bpi, "fashion-mnist", test_n=2)
    jig = run_scenario("jigsaw", bpi, "fashion-mnist", test_n=2)
    assert jig.settings["images"] == 2 and 0 <= jig.result.metrics["direct"] <= 1
    key = Key.generate()
    vp = schemes.create("vit+patch", key, steps=[("vit", {"scramble": False, "block_size": 4}),
                                                  ("patch", {"patch_size": 4})])
    cp = run_scenario("chosen-plaintext", vp, "fashion-mnist", test_n=3)
    # the keyed in-patch step falls to 2 tiled chosen images; what is left is the fresh patch order
    assert cp.result.metrics["fraction_recovered_with_flips"] == 1.0 and cp.result.cost.queries == 2
    assert torch.equal(cp.recovered, vp.steps[0].decrypt(cp.encrypted))
    wrong = schemes.create("vit+patch", Key.generate(), steps=[("vit", {"scramble": False, "block_size": 4}),
                                                                ("patch", {"patch_size": 4})])
    assert not torch.equal(cp.recovered, wrong.steps[0].decrypt(cp.encrypted))  # negative control
