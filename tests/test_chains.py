"""The ciphertext-only -> re-identification chain (attacks.chains, Reidentify's ``ciphertext-only`` variant)."""

from __future__ import annotations

import torch

from keyveil import Key, schemes
from keyveil.attacks import Reidentify, View
from keyveil.attacks.chains import CIPHERTEXT_ONLY, ciphertext_only_attack, recover_from_ciphertexts
from keyveil.attacks.ciphertext_only import neighbour_accuracy
from keyveil.attacks.reidentify import Eigenfaces, face_split
from keyveil.attacks.truth import true_permutation


def _small_faces():
    g, gl, p, pl = face_split()
    shrink = lambda x: torch.nn.functional.avg_pool2d(x.float(), 4).round().to(torch.uint8)  # noqa: E731  28x23
    return shrink(g), gl, shrink(p), pl


def _top1(gallery, labels, recon, truth):
    rec = Eigenfaces(components=40).fit(gallery, labels, classes=40)
    return float((rec.scores(recon).argmax(1) == truth).double().mean())


def test_dispatch_names_an_attack_or_a_reason():
    assert ciphertext_only_attack(schemes.create("pixel-np", Key.from_seed(1))).flips
    assert "keyless" in ciphertext_only_attack(schemes.create("visualmixer"))
    assert "per-channel" in ciphertext_only_attack(schemes.create("pixel", Key.from_seed(1), per_channel=True))
    rotating = schemes.create("block", Key.from_seed(1), rotate=True, shuffle="shared")
    assert "no ciphertext-only attack" in ciphertext_only_attack(rotating)
    assert type(ciphertext_only_attack(schemes.create("etc", Key.from_seed(1)))).__name__ == "BlockChain"
    assert "pixel" in CIPHERTEXT_ONLY and "block" in CIPHERTEXT_ONLY


def test_chain_on_pixel_beats_chance_and_per_image_permutations_stay_near_it():
    g, gl, p, pl = _small_faces()
    pixel = schemes.create("pixel", Key.from_seed(2))
    held = torch.cat([pixel.encrypt(p), pixel.encrypt(g)])
    recon, result = recover_from_ciphertexts(pixel, held, pixel.encrypt(p), g, seconds=1)
    leaked = _top1(g, gl, recon, pl)
    assert result.cost.ciphertexts == 400 and recon.shape == p.shape
    # negative control: every image under its own random permutation (the chain is told it is 'pixel')
    gen = torch.Generator().manual_seed(0)
    scramble = lambda x: torch.stack([i.flatten()[torch.randperm(i.numel(), generator=gen)].view(i.shape)  # noqa: E731
                                      for i in x])
    sp, sg = scramble(p), scramble(g)
    recon0, result0 = recover_from_ciphertexts(pixel, torch.cat([sp, sg]), sp, g, seconds=1)
    control = _top1(g, gl, recon0, pl)
    glance = _top1(g, gl, sp, pl)  # a shuffle keeps each photo's histogram: a little above chance (0.025)
    assert control <= max(glance, 0.025) + 0.05, (control, glance)  # the chain adds nothing to it
    assert 0.0 <= leaked <= 1.0  # 400 small faces: the layout is half right, the faces barely (SECURITY.md)
    truth = true_permutation(pixel, p.shape[1:]).index
    h, w = p.shape[-2:]
    assert neighbour_accuracy(result.details["layout"], truth, h, w) > 0.3  # a random layout: about 0.006
    assert neighbour_accuracy(result0.details["layout"], truth, h, w) < 0.1


def test_reidentify_reports_the_variant_or_why_not():
    g, gl, p, pl = _small_faces()
    kw = dict(gallery=g, gallery_labels=gl, probes=p, probe_labels=pl)
    attack = Reidentify(variants=("glance", "ciphertext-only"), recognizers=("eigenfaces",), views=(View("plain"),),
                        chain_seconds=1)
    r = attack.run(scheme=schemes.create("pixel-np", Key.from_seed(3)), **kw)
    assert 0.0 <= r.metrics["ciphertext-only/eigenfaces/top1"] <= 1.0
    assert r.cost.ciphertexts == 400 and not r.details["not_applicable"]
    r = attack.run(scheme=schemes.create("block", Key.from_seed(3), rotate=True, shuffle="shared"), **kw)
    assert "ciphertext-only" in r.details["not_applicable"]


def test_chain_on_block_schemes_gives_the_faces_back():
    g, gl, p, pl = _small_faces()
    crop = lambda x: x[..., :28, :20]  # noqa: E731  (4x4 blocks tile 28x20)
    g, p = crop(g), crop(p)
    for name in ("etc", "le"):
        s = schemes.create(name, Key.from_seed(4))
        held = torch.cat([s.encrypt(p), s.encrypt(g)])
        recon, _ = recover_from_ciphertexts(s, held, s.encrypt(p), g, seconds=1)
        glance = _top1(g, gl, s.encrypt(p), pl)
        assert _top1(g, gl, recon, pl) >= glance + 0.3, name  # the key falls, the faces come back
