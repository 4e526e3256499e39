"""Carlini et al.'s attack on InstaHide, on tiny sets: clusters are right, recovery beats the encodings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from keyveil import schemes
from keyveil.attacks import AttackError, create_attack
from keyveil.attacks.instahide import InstaHideAttack, cluster_encodings, encode_epochs, fit_calibration
from keyveil.metrics import ssim
from keyveil.schemes.baselines import instahide_values


def smooth_images(n: int, side: int, seed: int, *, low_level: float = 0.0) -> torch.Tensor:
    """Distinct smooth images in [low_level, 1] (upsampled random 4x4 grids), uint8."""
    g = torch.Generator().manual_seed(seed)
    low = low_level + (1 - low_level) * torch.rand(n, 1, 4, 4, generator=g)
    return (F.interpolate(low, size=(side, side), mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def test_encode_epochs_records_who_is_in_each_encoding():
    x = smooth_images(8, 16, 0)
    s = schemes.create("instahide", k=3)
    enc, members = encode_epochs(s, x, epochs=3, batch_size=4, generator=torch.Generator().manual_seed(1))
    assert enc.shape == (24, 1, 16, 16) and members.shape == (24, 8)
    assert torch.allclose(members.sum(1), torch.ones(24, dtype=members.dtype))
    # every image is encoded once per epoch as the image the encoding is made for (its first coefficient)
    assert ((members > 0).sum(1) <= 3).all()
    # recompute one encoding from the recorded members: |encoding| = |sum_i lambda_i (2 x_i - 1)|
    v = x.double() / 127.5 - 1
    expected = (members.double() @ v.flatten(1)).abs().view_as(v[:1].expand(24, -1, -1, -1))
    assert (instahide_values(enc).abs() - expected).abs().max() <= 1 / 127.5 + 1e-9


def test_clustering_finds_the_groups_of_a_tiny_synthetic_set():
    x = smooth_images(6, 16, 2)
    s = schemes.create("instahide", k=2)
    enc, members = encode_epochs(s, x, epochs=8, batch_size=6, generator=torch.Generator().manual_seed(3))
    groups, _ = cluster_encodings(instahide_values(enc).abs(), neighbors=3, clusters=6, merge_threshold=0.9)
    assert len(groups) == 6
    found = set()
    for g in groups:
        shared = (members[g] > 0).all(0).nonzero().flatten()  # an image contained in every encoding of the group
        assert len(shared) >= 1, "a group whose encodings share no private image"
        found.update(shared.tolist())
    assert len(found) >= 5  # (nearly) every private image has its group


def test_recovered_ssim_beats_encoded_ssim_on_held_out_images():
    # bright images: |2v - 1| = 2v - 1 is not folded, so the calibration can map it back (on faces the
    # shared face structure plays that role; on images of any brightness the fold is ambiguous)
    private, public = smooth_images(10, 24, 4, low_level=0.55), smooth_images(30, 24, 5, low_level=0.55)
    s = schemes.create("instahide", k=2)
    enc, members = encode_epochs(s, private, epochs=10, batch_size=10, generator=torch.Generator().manual_seed(6))
    attack = create_attack("instahide", neighbors=5, clusters=10, merge_threshold=0.7)
    r = attack.run(encodings=enc, members=members, private=private, public=public, scheme=s, batch_size=10)
    m = r.metrics
    assert r.reconstructions.shape == (10, 1, 24, 24)
    assert m["recovered_ssim"] > m["encoded_ssim"] + 0.2
    assert m["recovered_ssim"] > m["public_mean_ssim"]
    assert m["purity"] > 0.8 and m["coverage"] >= 0.7
    # the metric is SSIM against each cluster's dominant image, recomputed here independently
    dom = torch.tensor(r.details["dominant"])
    direct = ssim(private[dom].double() / 255, r.reconstructions.double(), data_range=1.0).mean()
    assert m["recovered_ssim"] == pytest.approx(float(direct), abs=1e-6)
    # without public images: the folded image rescaled, still above the encodings
    r2 = InstaHideAttack(neighbors=5, clusters=10).run(encodings=enc, members=members, private=private)
    assert r2.metrics["recovered_ssim"] > r2.metrics["encoded_ssim"]


def test_calibration_is_per_pixel_least_squares():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(50, 1, 3, 3, generator=g, dtype=torch.float64)
    a_true, b_true = torch.rand(1, 3, 3, generator=g, dtype=torch.float64), torch.rand(1, 3, 3, generator=g,
                                                                                       dtype=torch.float64)
    a, b = fit_calibration(means, a_true * means + b_true)
    assert torch.allclose(a, a_true) and torch.allclose(b, b_true)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(AttackError, match=">= 1"):
        InstaHideAttack(neighbors=0)
    with pytest.raises(AttackError, match="N >= 2"):
        InstaHideAttack().run(encodings=torch.zeros(1, 1, 8, 8))
    with pytest.raises(AttackError, match="both members and private"):
        InstaHideAttack().run(encodings=torch.zeros(4, 1, 8, 8), members=torch.zeros(4, 2))
    with pytest.raises(AttackError, match="needs the public instahide scheme"):
        InstaHideAttack(neighbors=2).run(encodings=torch.rand(4, 1, 8, 8), public=torch.rand(3, 1, 8, 8))
    with pytest.raises(AttackError, match="needs an instahide scheme"):
        encode_epochs(schemes.create("noise"), torch.zeros(2, 1, 8, 8), epochs=1, batch_size=2,
                      generator=torch.Generator())
