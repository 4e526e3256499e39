"""The learned inversion's perceptual and adversarial objectives: they invert an invertible scheme from leaked
pairs, and recover nothing from ciphertexts that do not depend on the images (negative control)."""

import pytest
import torch

from keyveil.attacks import AttackError, LearnedInversion
from keyveil.attacks.inversion_losses import (
    GanObjective,
    PatchDiscriminator,
    PerceptualObjective,
    train_features,
)


def blobs(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """Smooth synthetic images: three Gaussian blobs of random place, width and height."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    img = torch.zeros(n, 1, size, size)
    for _ in range(3):
        cy, cx = torch.rand(n, 1, 1, 1, generator=g) * size, torch.rand(n, 1, 1, 1, generator=g) * size
        s, a = 1.5 + 2.5 * torch.rand(n, 1, 1, 1, generator=g), torch.rand(n, 1, 1, 1, generator=g)
        img += a * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return (img / img.amax((1, 2, 3), keepdim=True) * 255).round().to(torch.uint8)


def cell_shuffle(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """A fixed keyed shuffle of the 4 pixels of every 2×2 cell, then negative-positive: invertible."""
    b, c, h, w = x.shape
    u = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)[..., perm]
    return 255 - u.reshape(b, c, h // 2, w // 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


@pytest.fixture
def data(one_thread):
    return blobs(512, 0), blobs(64, 1), torch.tensor([2, 0, 3, 1])


@pytest.mark.parametrize("loss", ["perceptual", "gan"])
def test_new_losses_invert_leaked_pairs_of_an_invertible_scheme(data, loss):
    x, xt, perm = data
    r = LearnedInversion(epochs=6, width=8, batch_size=32, loss=loss).run(
        train_plain=x, train_encrypted=cell_shuffle(x, perm), test_encrypted=cell_shuffle(xt, perm), test_plain=xt)
    m = r.metrics
    assert m["ssim"] > 0.8 and m["ssim"] > m["ssim_encrypted"] + 0.5 and m["ssim"] > m["ssim_prior"] + 0.5
    assert m["psnr"] > m["psnr_encrypted"] + 10
    assert r.details["loss"] == loss and r.cost.pairs == 512


@pytest.mark.parametrize("loss", ["perceptual", "gan"])
def test_new_losses_recover_nothing_from_independent_ciphertexts(data, loss):
    x, xt, _ = data
    r = LearnedInversion(epochs=6, width=8, batch_size=32, loss=loss).run(
        train_plain=x, train_encrypted=blobs(512, 9), test_encrypted=blobs(64, 10), test_plain=xt)
    m = r.metrics
    assert abs(m["ssim"] - m["ssim_encrypted"]) < 0.05  # no gain over the ciphertext itself
    assert m["ssim"] < m["ssim_prior"] + 0.03  # at best the mean image, nothing image-specific


def test_gan_step_updates_the_discriminator_and_perceptual_features_are_trained(one_thread):
    x = blobs(64, 0).float() / 255
    d = PatchDiscriminator(1, width=4)
    before = [p.detach().clone() for p in d.parameters()]
    gan = GanObjective(d)
    gen = torch.nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    loss, counts = gan.loss(gen, (x, x))
    assert all(p.grad is None for p in d.parameters())  # the generator's loss leaves D's gradients alone
    gan.step(opt, loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, d.parameters()))
    feats = train_features(x, epochs=3, batch_size=16, width=4)
    assert not any(p.requires_grad for p in feats.parameters())
    obj = PerceptualObjective(feats)
    assert float(obj.distance(x, x).max()) < 1e-6
    assert float(obj.distance(x, x.flip(-1)).mean()) > 0
    with pytest.raises(AttackError, match="unknown loss"):
        LearnedInversion(loss="lpips")


def test_scenario_gives_keyed_schemes_leaked_pairs_and_keyless_ones_self_made(one_thread, fashion):
    import warnings

    from keyveil.attacks.scenarios import make_scheme, run_scenario
    from keyveil.keys import InsecureKeyWarning, Key

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        key = Key.from_seed(0)
    opts = {"epochs": 2, "width": 4, "loss": "gan"}
    keyed = run_scenario("learned-inversion", make_scheme("visualmixer-seed+pixel", fashion, key), fashion,
                         n=64, test_n=8, options=opts)  # per-image, but its pixel step needs the victims' key
    assert keyed.settings == {"train_images": 64, "leaked": 1, "loss": "gan", "epochs": 2} and keyed.result.cost.pairs == 64
    keyless = run_scenario("learned-inversion", make_scheme("visualmixer", fashion, key), fashion, n=64, test_n=8,
                           options=opts)
    assert keyless.settings["leaked"] == 0 and keyless.result.cost.pairs == 2 * 64  # fresh pairs every epoch
    assert keyless.recovered.shape == keyless.originals.shape  # per-image reconstructions kept
