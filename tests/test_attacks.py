"""The attack suite: key recovery, layout recovery, jigsaw, inversion, membership."""

from __future__ import annotations

import pytest
import torch

from keyveil import Key, schemes
from keyveil.attacks import (
    Attack,
    AttackError,
    ChosenPlaintext,
    CiphertextOnly,
    JigsawSolver,
    KnownPlaintext,
    LearnedInversion,
    MembershipInference,
    RecoveredPermutation,
    _data,
    auc,
    block_comparison,
    crafted_images,
    create_attack,
    list_attacks,
    register_attack,
    train_classifier,
)
from keyveil.attacks._data import orl_faces
from keyveil.attacks.ciphertext_only import grid_symmetries, neighbour_accuracy


def test_registry_lists_every_attack_and_rejects_duplicates():
    assert set(list_attacks()) >= {"chosen-plaintext", "known-plaintext", "ciphertext-only", "jigsaw",
                                   "learned-inversion", "membership"}
    assert isinstance(create_attack("jigsaw", block_size=8), JigsawSolver)
    with pytest.raises(AttackError, match="did you mean 'jigsaw'"):
        create_attack("jigsav")
    with pytest.raises(TypeError):
        ChosenPlaintext(True)  # hyperparameters are keyword-only

    class Dup(Attack):
        name = "jigsaw"

    with pytest.raises(ValueError, match="already registered"):
        register_attack(Dup)


def test_crafted_images_spell_indices_in_base_256():
    imgs = crafted_images((3, 5, 7))  # 105 values: one digit
    assert imgs.shape == (1, 3, 5, 7)
    flat = imgs.reshape(-1)
    for i in range(105):  # slow reference
        assert int(flat[i]) == i % 256
    big = crafted_images((1, 20, 20))  # 400 values: two digits
    idx = big[0].reshape(-1).long() + 256 * big[1].reshape(-1).long()
    assert torch.equal(idx, torch.arange(400))


@pytest.mark.parametrize("size,queries", [((32, 32), 2), ((224, 224), 3)])
def test_chosen_plaintext_recovers_pixel_key(size, queries):
    s = schemes.create("pixel", Key.from_seed(11))
    s.encrypt(torch.zeros(1, 3, *size, dtype=torch.uint8))  # derive the key's permutation before timing
    r = ChosenPlaintext().run(oracle=s.encrypt, image_size=size, reference=s)  # its CPU time: bench_attack_cost.py
    assert r.cost.queries == queries
    assert r.metrics["fraction_recovered"] == 1.0
    assert torch.equal(r.recovered.value_level().index.view(3, -1)[0], s.permutation(*size))
    x = torch.rand(2, 3, *size)
    assert torch.equal(r.decrypt(s.encrypt(x)), x)


@pytest.mark.parametrize("name,opts,queries", [
    ("pixel", {"per_channel": True}, 2), ("etc", {}, 3), ("vit", {"block_size": 8}, 3), ("le", {}, 5),
    ("ele", {}, 5), ("block", {"rotate": True, "shuffle": "per_block"}, 2), ("pixel-np", {}, 3),
])
def test_chosen_plaintext_breaks_every_fixed_key_scheme(name, opts, queries):
    s = schemes.create(name, Key.from_seed(12), **opts)
    r = ChosenPlaintext(nibbles=name in ("le", "ele")).run(oracle=s.encrypt, image_size=(32, 32), reference=s)
    assert r.cost.queries == queries
    assert r.metrics.get("fraction_recovered_with_flips", r.metrics["fraction_recovered"]) == 1.0
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(r.decrypt(s.encrypt(x)), x)
    assert torch.equal(r.recovered.encrypt(x), s.encrypt(x))


def test_chosen_plaintext_spatial_mode_and_refusals():
    s = schemes.create("pixel", Key.from_seed(13))
    r = ChosenPlaintext(spatial=True).run(oracle=s.encrypt, image_size=(224, 224), reference=s)
    assert r.cost.queries == 2 and r.metrics["fraction_recovered"] == 1.0
    with pytest.raises(AttackError, match="not a fixed-key permutation"):
        ChosenPlaintext().run(oracle=lambda x: schemes.create("mix", patch_size=4).encrypt(x),
                              image_size=(16, 16))
    with pytest.raises(AttackError, match="exclude"):
        ChosenPlaintext(spatial=True, nibbles=True)


def test_recovered_permutation_rejects_wrong_shape():
    p = RecoveredPermutation((1, 2, 2), torch.tensor([1, 0, 3, 2]))
    with pytest.raises(AttackError, match="shape"):
        p.decrypt(torch.zeros(1, 1, 3, 3))


def _known_plaintext_reference(plain, enc):
    """Slow loop: encrypted position k is determined when exactly one plain position has its values."""
    n, c, h, w = plain.shape
    pv = [tuple(plain[:, :, i // w, i % w].reshape(-1).tolist()) for i in range(h * w)]
    ev = [tuple(enc[:, :, i // w, i % w].reshape(-1).tolist()) for i in range(h * w)]
    return sum(pv.count(v) == 1 for v in ev) / (h * w)


def test_known_plaintext_fraction_grows_with_pairs_on_fashion_mnist(fashion):
    s = schemes.create("pixel", Key.from_seed(14))
    x, _ = _data.load(fashion, "train", 8)
    fractions = []
    for n in (1, 2, 8):
        r = KnownPlaintext().run(plain=x[:n], encrypted=s.encrypt(x[:n]), reference=s)
        assert r.metrics["fraction_determined"] == pytest.approx(
            _known_plaintext_reference(x[:n], s.encrypt(x[:n])))
        fractions.append(r.metrics["fraction_recovered"])
        assert r.metrics["fraction_recovered"] >= r.metrics["fraction_determined"]
    assert fractions[0] < fractions[1] < fractions[2]
    noisy = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    r = KnownPlaintext().run(plain=noisy, encrypted=s.encrypt(noisy), reference=s)
    assert r.metrics["fraction_recovered"] == 1.0
    with pytest.raises(AttackError, match="not a rearrangement"):
        KnownPlaintext().run(plain=noisy, encrypted=255 - s.encrypt(noisy))


def test_grid_symmetries_and_neighbour_accuracy():
    maps = grid_symmetries(4, 4)
    assert len({tuple(m.tolist()) for m in maps}) == 8
    assert len({tuple(m.tolist()) for m in grid_symmetries(3, 5)}) == 4
    ident = torch.arange(16)
    for m in maps:  # a layout that is a symmetry of the truth has all its neighbours right
        assert neighbour_accuracy(m, ident, 4, 4) == 1.0
    swapped = ident.clone()
    swapped[[0, 15]] = swapped[[15, 0]]
    # slow reference: 24 adjacent pairs, those touching cells 0 and 15 (2 each) are wrong
    assert neighbour_accuracy(swapped, ident, 4, 4) == pytest.approx(20 / 24)


def test_ciphertext_only_recovers_layout_from_fashion_mnist(fashion):
    s = schemes.create("pixel", Key.from_seed(15))
    x, _ = _data.load(fashion, "train", 3000)
    xt, _ = _data.load(fashion, "test", 50)
    r = CiphertextOnly(anneal_seconds=3).run(ciphertexts=s.encrypt(x), test_encrypted=s.encrypt(xt),
                                             test_plain=xt, reference=s)
    assert r.metrics["neighbour_accuracy"] > 0.6  # a random layout gets about 0.005
    assert r.metrics["ssim_best_symmetry"] > r.metrics["ssim_encrypted"] + 0.01
    assert r.cost.ciphertexts == 3000 and r.cost.cpu_seconds > 0  # its budget: benchmarks/bench_attack_cost.py
    assert r.reconstructions.shape == xt.shape


def _comparison_reference(recon, plain, m):
    c, h, w = plain.shape
    blk = lambda t, i, j: t[:, i * m:(i + 1) * m, j * m:(j + 1) * m]  # noqa: E731
    nh, nw = h // m, w // m
    direct = sum(torch.equal(blk(recon, i, j), blk(plain, i, j)) for i in range(nh) for j in range(nw))
    pairs = []
    for i in range(nh):
        for j in range(nw):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < nh and j + dj < nw:
                    a, b = blk(recon, i, j), blk(recon, i + di, j + dj)
                    pairs.append(any(torch.equal(a, blk(plain, p, q)) and torch.equal(b, blk(plain, p + di, q + dj))
                                     for p in range(nh - di) for q in range(nw - dj)))
    return direct / (nh * nw), sum(pairs) / len(pairs)


def test_block_comparison_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    plain = torch.randint(0, 3, (1, 12, 16), generator=g, dtype=torch.uint8)
    recon = schemes.create("patch", patch_size=4).encrypt(plain, generator=g)
    got = block_comparison(recon, plain, 4)
    direct, neighbour = _comparison_reference(recon, plain, 4)
    assert got["direct"] == pytest.approx(direct) and got["neighbour"] == pytest.approx(neighbour)
    assert block_comparison(plain, plain, 4) == {"direct": 1.0, "neighbour": 1.0}


def test_jigsaw_reassembles_patch_shuffled_faces():
    faces, _ = orl_faces(range(36, 37))
    x = faces[:3]
    y = schemes.create("patch", patch_size=16).encrypt(x, generator=torch.Generator().manual_seed(1))
    r = JigsawSolver(block_size=16).run(encrypted=y, plain=x)
    assert r.metrics["neighbour"] > 0.6
    assert r.metrics["ssim"] > r.metrics["ssim_encrypted"] + 0.2
    assert r.reconstructions.shape == x.shape and r.reconstructions.dtype == torch.uint8


def test_jigsaw_is_orientation_aware_for_etc():
    t = torch.linspace(0, 1, 16)
    img = (t[:, None] ** 2 * 0.6 + t[None, :] * 0.3 + 0.05) * 255
    x = img.round().to(torch.uint8)[None, None]
    etc = schemes.create("etc", Key.from_seed(16))
    r = JigsawSolver(block_size=4, rotations=True, negapos=True).run(encrypted=etc.encrypt(x), plain=x)
    plain_solver = JigsawSolver(block_size=4).run(encrypted=etc.encrypt(x), plain=x)
    assert r.metrics["neighbour"] > plain_solver.metrics["neighbour"]


def stratified(name: str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stratified subset of ``n`` images (every class, whatever order the files keep)."""
    from keyveil.data import create_dataset

    ds = create_dataset(name, split).limit(n)
    return ds.get_batch(list(range(len(ds))))


def test_learned_inversion_beats_the_encrypted_baseline(one_thread, fashion):
    x, _ = stratified(fashion, "train", 256)
    xt, _ = stratified(fashion, "test", 64)
    s = schemes.create("patch", patch_size=4)
    gen = torch.Generator().manual_seed(0)
    r = LearnedInversion(epochs=4, width=8, batch_size=32).run(encrypt=lambda v: s.encrypt(v, generator=gen), train_plain=x,
                                               test_encrypted=s.encrypt(xt, generator=gen), test_plain=xt)
    assert r.metrics["ssim"] > r.metrics["ssim_encrypted"]
    assert r.metrics["psnr"] > r.metrics["psnr_encrypted"]
    assert r.cost.pairs == 4 * 256  # a fresh encryption of every image in every epoch
    with pytest.raises(AttackError, match="exactly one"):
        LearnedInversion().run(train_plain=x, test_encrypted=xt)


def test_auc_matches_pairwise_count():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 5, (17,), generator=g).float(), torch.randint(0, 5, (13,), generator=g).float()
    ref = sum((u > v) + 0.5 * (u == v) for u in a.tolist() for v in b.tolist()) / (17 * 13)
    assert auc(a, b) == pytest.approx(ref)


def test_membership_inference_detects_an_overfit_model(one_thread, fashion):
    x, y = stratified(fashion, "train", 64)
    xn, yn = stratified(fashion, "test", 64)
    net = train_classifier(x, y, classes=10, epochs=40, batch_size=32)
    r = MembershipInference().run(model=net, members=(x, y), nonmembers=(xn, yn))
    assert r.metrics["auc"] > 0.6
    assert r.metrics["member_loss"] < r.metrics["nonmember_loss"]
    assert 0 < r.metrics["advantage"] <= 1
