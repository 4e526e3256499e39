"""The ciphertext-only layout recovery (attacks.layout + CiphertextOnly): known layouts, negative controls."""

import torch

from keyveil import Key, schemes
from keyveil.attacks import CiphertextOnly
from keyveil.attacks.layout import grow_layout, partial_correlation, recover_flips, refine_layout


def _smooth(n: int, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    """Blurred white noise: a smooth random field whose neighbours are the most related pixels."""
    g = torch.Generator().manual_seed(seed)
    k = torch.exp(-torch.arange(-3, 4.0).pow(2) / 1.3)  # a Gaussian blur of sigma 0.8
    k = (k[:, None] * k[None, :] / k.sum() ** 2)[None, None]
    noise = torch.randn(n, 1, h + 6, w + 6, generator=g)
    x = torch.nn.functional.conv2d(noise, k)
    return (x / x.std() * 40 + 128).round().clamp(0, 255).to(torch.uint8)


def test_recovers_a_known_layout_and_flips():
    x = _smooth(3000)
    for name in ("pixel", "pixel-np"):
        s = schemes.create(name, Key.from_seed(3))
        r = CiphertextOnly(anneal_seconds=1, flips=name == "pixel-np").run(
            ciphertexts=s.encrypt(x), test_encrypted=s.encrypt(x[:20]), test_plain=x[:20], reference=s)
        assert r.metrics["neighbour_accuracy"] >= (0.8 if name == "pixel" else 0.75), (name, r.metrics)  # random: 4/144
        if name == "pixel":
            assert r.metrics["ssim_best_symmetry"] > r.metrics["ssim_encrypted"] + 0.05
        else:
            assert r.metrics["flip_accuracy_up_to_negation"] >= 0.9  # mid-grey noise: no dark background to pick by


def test_noise_and_per_image_permutations_stay_near_chance():
    g = torch.Generator().manual_seed(1)
    s = schemes.create("pixel", Key.from_seed(4))
    noise = torch.randint(0, 256, (3000, 1, 12, 12), generator=g, dtype=torch.uint8)
    x = _smooth(3000, seed=2)
    per_image = torch.stack([img.flatten()[torch.randperm(144, generator=g)].view(1, 12, 12) for img in x])
    for cipher in (s.encrypt(noise), per_image):
        r = CiphertextOnly(anneal_seconds=0.5).run(ciphertexts=cipher, reference=s)
        assert r.metrics["neighbour_accuracy"] < 0.15, r.metrics  # chance: about 0.03


def test_pieces_on_an_exact_grid_affinity():
    h, w = 6, 7
    p = h * w
    perm = torch.randperm(p, generator=torch.Generator().manual_seed(0))
    r, c = perm // w, perm % w
    dist = (r[:, None] - r[None, :]).abs() + (c[:, None] - c[None, :]).abs()
    diag = ((r[:, None] - r[None, :]).abs() == 1) & ((c[:, None] - c[None, :]).abs() == 1)
    s = (dist == 1).float() * 0.4 - diag.float() * 0.1
    layout = grow_layout(s, h, w)
    assert sorted(layout.tolist()) == list(range(p))
    from keyveil.attacks.ciphertext_only import neighbour_accuracy

    assert neighbour_accuracy(layout, perm, h, w) == 1.0
    shuffled = torch.randperm(p, generator=torch.Generator().manual_seed(1))
    better, tried = refine_layout(shuffled, s, -s, h, w, seconds=0.5, radius=2)
    assert tried > 0 and neighbour_accuracy(better, perm, h, w) > neighbour_accuracy(shuffled, perm, h, w)
    signs = torch.where(torch.rand(p, generator=torch.Generator().manual_seed(2)) < 0.5, -1.0, 1.0)
    got = recover_flips(s * signs[:, None] * signs[None, :])
    assert bool((got == signs).all() or (got == -signs).all())


def test_partial_correlation_woodbury_matches_direct():
    z = torch.randn(30, 12, generator=torch.Generator().manual_seed(0)).double()
    wide = partial_correlation(z[:8], 0.1)  # 8 samples < 12 positions: the Woodbury branch
    zs = z[:8] - z[:8].mean(0)
    zs = zs / (zs.pow(2).mean(0).sqrt() * 8 ** 0.5)
    theta = torch.linalg.inv(zs.T @ zs + 0.1 * torch.eye(12, dtype=torch.double))
    d = theta.diagonal().sqrt()
    ref = (-theta / d[:, None] / d[None, :]).fill_diagonal_(0).float()
    assert torch.allclose(wide, ref, atol=1e-4)
