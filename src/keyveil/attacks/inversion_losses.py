"""The learned inversion's training objectives beyond L1: perceptual and adversarial (GAN).

- ``perceptual``: L1 plus distances between features of a small network the
  attacker trains itself, by :func:`train_features`, as an autoencoder on its
  public plain images (no pretrained weights: nothing can be downloaded). The
  features are unit-normalized per position and compared layer by layer, as
  LPIPS compares its backbone's features (Zhang et al. 2018), without LPIPS'
  learned per-channel weights.
- ``gan``: pix2pix (Isola et al. 2017): L1 plus an adversarial term from a
  conditional PatchGAN discriminator that sees (encrypted, image) pairs and
  scores overlapping patches, with the hinge loss (Miyato et al. 2018). This is
  the GAN inversion of Ito et al. and Madono et al. ("SIA-GAN", 2021) at CPU size.

Both run through keyveil's one loop (:func:`keyveil.engine.loop.train_loop`):
the generator's loss is its ``loss_fn`` hook and the discriminator's update is
taken in its ``step`` hook, right after the generator's step, on the batch the
loss just saw (:class:`GanObjective`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.loop import index_batches, optimizer_step, train_loop

__all__ = ["LOSSES", "FeatureNet", "PatchDiscriminator", "train_features", "PerceptualObjective", "GanObjective"]

LOSSES = ("l1", "perceptual", "gan")
"""The learned inversion's objectives (``LearnedInversion(loss=...)``)."""


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True))


class FeatureNet(nn.Module):
    """A three-level convolutional autoencoder; :meth:`features` gives the encoder's three levels.

    Shape:
        ``(B,C,H,W)`` float in [0,1] -> same (the reconstruction); H, W multiples of 4 are exact,
        others are cropped back.

    Examples:
        >>> import torch
        >>> net = FeatureNet(1, width=4)
        >>> [f.shape[1] for f in net.features(torch.rand(2, 1, 28, 28))], net(torch.rand(2, 1, 28, 28)).shape
        ([4, 8, 16], torch.Size([2, 1, 28, 28]))
    """

    def __init__(self, channels: int, *, width: int = 16) -> None:
        super().__init__()
        w = width
        self.levels = nn.ModuleList([_conv(channels, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 4 * w, 2)])
        self.decode = nn.Sequential(nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), nn.LeakyReLU(0.2),
                                    nn.ConvTranspose2d(2 * w, w, 2, stride=2), nn.LeakyReLU(0.2),
                                    nn.Conv2d(w, channels, 3, padding=1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.decode(self.features(x)[-1])
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False) if y.shape[-2:] != (h, w) else y
        return torch.sigmoid(y)


def train_features(plain: torch.Tensor, *, epochs: int = 2, batch_size: int = 64, width: int = 16,
                   lr: float = 2e-3, seed: int = 0) -> FeatureNet:
    """Train a :class:`FeatureNet` as a denoising autoencoder on public plain images (float in [0,1]).

    Returns the network frozen (eval mode, no gradients to its weights).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 7)
    net = FeatureNet(plain.shape[1], width=width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def loss_fn(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        noisy = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        return F.l1_loss(m(noisy), x), {"n": len(x)}

    train_loop(net, opt, lambda e: (plain[i] for i in index_batches(len(plain), batch_size, generator=gen)),
               epochs=epochs, loss_fn=loss_fn)
    net.eval()
    net.requires_grad_(False)
    return net


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)


class PerceptualObjective:
    """``loss_fn`` hook: L1 + ``weight`` × mean over levels of the squared distance of unit features.

    Args:
        features: a frozen :class:`FeatureNet` (from :func:`train_features`).
        weight: weight of the feature term.
    """

    def __init__(self, features: FeatureNet, *, weight: float = 0.1) -> None:
        self.features, self.weight = features, float(weight)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image feature distance (LPIPS-style, with the attacker's own features)."""
        terms = [(_unit(fa) - _unit(fb)).pow(2).sum(1).mean((-2, -1))
                 for fa, fb in zip(self.features.features(a), self.features.features(b))]
        return torch.stack(terms).mean(0)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        enc, target = batch
        out = model(enc)
        loss = F.l1_loss(out, target) + self.weight * self.distance(out, target).mean()
        return loss, {"n": len(enc)}


class PatchDiscriminator(nn.Module):
    """A conditional PatchGAN: (encrypted, image) -> one logit per overlapping patch.

    Examples:
        >>> import torch
        >>> PatchDiscriminator(1, width=8)(torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 7, 7])
    """

    def __init__(self, channels: int, *, width: int = 16) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GroupNorm(1, 2 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * w, 1, 3, padding=1))

    def forward(self, encrypted: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([encrypted, image], 1))


class GanObjective:
    """pix2pix hooks for :func:`train_loop`: :meth:`loss` (generator) and :meth:`step` (both updates).

    The generator minimizes ``L1 + adversarial_weight × (−D(fake))`` (hinge generator loss);
    the discriminator, stepped after the generator on the same batch, minimizes
    ``relu(1 − D(real)) + relu(1 + D(fake))``.

    Args:
        discriminator: a :class:`PatchDiscriminator`.
        lr: its Adam learning rate (betas 0.5, 0.999 as in pix2pix).
        adversarial_weight: weight of the adversarial term against L1 (pix2pix: 1/100).
    """

    def __init__(self, discriminator: PatchDiscriminator, *, lr: float = 2e-4,
                 adversarial_weight: float = 0.01) -> None:
        self.d = discriminator
        self.opt = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.weight = float(adversarial_weight)
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        enc, target = batch
        fake = model(enc)
        self.d.requires_grad_(False)  # the generator's backward does not touch D's gradients
        adv = -self.d(enc, fake).mean()
        self.d.requires_grad_(True)
        self._batch = (enc, target, fake.detach())
        return F.l1_loss(fake, target) + self.weight * adv, {"n": len(enc), "adv_sum": float(adv.detach()) * len(enc)}

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer_step(optimizer, loss)
        assert self._batch is not None
        enc, real, fake = self._batch
        d_loss = F.relu(1 - self.d(enc, real)).mean() + F.relu(1 + self.d(enc, fake)).mean()
        optimizer_step(self.opt, d_loss)
        self._batch = None
