"""Learned inversion: a small U-Net trained to undo a scheme (docs/design.md §5).

For keyless per-image schemes (``patch``, ``mix``, ``visualmixer``) anybody
can make unlimited (encrypted, plain) pairs from public images, since the
scheme's code is public and needs no secret; for keyed schemes the attacker
needs leaked pairs. The network learns whatever structure the scheme leaves:
local statistics for window shuffles, patch contents for patch shuffles
(Madono et al., "SIA-GAN", 2021, is the GAN version of this attack).

``loss="perceptual"`` and ``loss="gan"`` train the same U-Net with the
objectives of :mod:`keyveil.attacks.inversion_losses` (features of a network
the attacker trains itself on its plain images; a conditional PatchGAN).

LPIPS is not reported: no maintained implementation computes it offline.
``lpips`` 0.1.4 ships only its linear heads (``lpips/weights/v0.1/alex.pth``)
and builds its backbone with ``torchvision.models.alexnet(pretrained=True)``,
which downloads ``https://download.pytorch.org/models/alexnet-owt-7be5be79.pth``;
``piq`` 0.8.0's ``LPIPS`` downloads ``https://github.com/photosynthesis-team/
photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt`` (and VGG16
from torchvision); ``piqa`` 1.3.2 downloads the same AlexNet file and the heads
from GitHub. LPIPS with untrained backbone features would not be LPIPS.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.loop import index_batches, train_loop
from ..metrics.quality import psnr, ssim
from .base import Attack, AttackError, AttackResult, Cost, measure, register_attack
from .inversion_losses import LOSSES, GanObjective, PatchDiscriminator, PerceptualObjective, train_features

__all__ = ["LearnedInversion", "UNet"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A two-level U-Net (Ronneberger et al. 2015), small enough for a CPU.

    Args:
        channels: image channels in and out.
        width: channels of the first level (doubled at each level).

    Shape:
        ``(B,C,H,W)`` float in [0,1] -> same; H and W are padded to multiples of 4 internally.

    Examples:
        >>> import torch
        >>> UNet(1, width=8)(torch.rand(2, 1, 28, 30)).shape
        torch.Size([2, 1, 28, 30])
    """

    def __init__(self, channels: int, *, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = _block(channels, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _block(2 * w, w)
        self.out = nn.Conv2d(w, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return torch.sigmoid(self.out(d1))[..., :h, :w]


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


@register_attack
class LearnedInversion(Attack):
    """Train a U-Net on (encrypted, plain) pairs, then invert held-out images.

    Args:
        epochs: passes over the training images.
        batch_size: images per step.
        lr: Adam learning rate.
        width: U-Net width.
        seed: seed of the initialization and shuffling (reproducible figures).
        loss: ``"l1"`` (pixels), ``"perceptual"`` (L1 plus the distance of features of an autoencoder
            the attacker first trains on ``train_plain``, ``feature_epochs`` epochs) or ``"gan"``
            (L1 plus a conditional PatchGAN's hinge loss, pix2pix).
        perceptual_weight: weight of the feature term (``loss="perceptual"``).
        adversarial_weight: weight of the adversarial term (``loss="gan"``).
        feature_epochs: epochs of the attacker's feature network (``loss="perceptual"``).

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> s = schemes.create("patch", patch_size=4)
        >>> x = torch.randint(0, 256, (32, 1, 12, 12), dtype=torch.uint8)
        >>> r = LearnedInversion(epochs=1, width=4).run(encrypt=s.encrypt, train_plain=x,
        ...                                            test_encrypted=s.encrypt(x[:4]), test_plain=x[:4])
        >>> sorted(r.metrics)[:3]
        ['pairs', 'psnr', 'psnr_encrypted']
    """

    name = "learned-inversion"
    description = "U-Net trained on (encrypted, plain) pairs the attacker can make or has leaked"

    def __init__(self, *, epochs: int = 5, batch_size: int = 64, lr: float = 2e-3, width: int = 16,
                 seed: int = 0, loss: str = "l1", perceptual_weight: float = 0.1,
                 adversarial_weight: float = 0.01, feature_epochs: int = 2) -> None:
        if epochs < 1 or batch_size < 1 or feature_epochs < 1:
            raise AttackError("epochs, batch_size and feature_epochs must be positive")
        if loss not in LOSSES:
            raise AttackError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.loss = loss
        self.perceptual_weight, self.adversarial_weight = float(perceptual_weight), float(adversarial_weight)
        self.feature_epochs = int(feature_epochs)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.width = int(width)
        self.seed = int(seed)

    def run(
        self,
        *,
        train_plain: torch.Tensor,
        test_encrypted: torch.Tensor,
        encrypt: Callable[[torch.Tensor], torch.Tensor] | None = None,
        train_encrypted: torch.Tensor | None = None,
        test_plain: torch.Tensor | None = None,
    ) -> AttackResult:
        """Train and invert.

        Args:
            train_plain: ``(N,C,H,W)`` images the attacker holds.
            test_encrypted: the victims' encrypted images to invert.
            encrypt: the public scheme (keyless): fresh pairs are made every
                epoch, as many as the attacker likes.
            train_encrypted: leaked encryptions of ``train_plain`` (keyed
                schemes); exactly one of ``encrypt`` / ``train_encrypted``.
            test_plain: originals, only to score (adds ``ssim``, ``psnr``, the
                no-attack baselines ``ssim_encrypted``, ``psnr_encrypted``, and
                ``ssim_prior``: the SSIM of the mean training image, what a
                network that learned nothing from the ciphertexts would output).

        Returns:
            An :class:`AttackResult` with the inverted test images (same dtype
            as ``test_encrypted``) and the trained network in ``details["model"]``.
        """
        if (encrypt is None) == (train_encrypted is None):
            raise AttackError("pass exactly one of encrypt= (make pairs) or train_encrypted= (leaked pairs)")
        plain = torch.as_tensor(train_plain)
        test_y = torch.as_tensor(test_encrypted)
        c = plain.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        net = UNet(c, width=self.width)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        cost = Cost()
        with measure(cost):
            fixed = None if train_encrypted is None else _to_float(torch.as_tensor(train_encrypted))
            target = _to_float(plain)

            def pairs(epoch: int):
                if encrypt is not None:  # fresh pairs every epoch
                    enc = _to_float(torch.as_tensor(encrypt(plain)))
                    cost.pairs += plain.shape[0]
                else:
                    enc = fixed
                    cost.pairs = plain.shape[0]
                for idx in index_batches(plain.shape[0], self.batch_size, generator=gen):
                    yield enc[idx], target[idx]

            hooks = self._hooks(target, c)
            history = train_loop(net, opt, pairs, epochs=self.epochs, **hooks)
            losses = [h["loss_sum"] / h["n"] for h in history]
            net.eval()
            with torch.no_grad():
                out = torch.cat([net(_to_float(test_y[i: i + 256])) for i in range(0, len(test_y), 256)])
        recon = (out * 255).round().to(torch.uint8) if test_y.dtype == torch.uint8 else out.to(test_y.dtype)
        result = AttackResult(self.name, reconstructions=recon, cost=cost,
                              details={"model": net, "train_loss": losses, "loss": self.loss})
        result.metrics["pairs"] = float(cost.pairs)
        if test_plain is not None:
            p = torch.as_tensor(test_plain)
            result.metrics["ssim"] = float(ssim(p, recon).mean())
            result.metrics["psnr"] = float(psnr(p, recon).mean())
            result.metrics["ssim_encrypted"] = float(ssim(p, test_y).mean())
            result.metrics["psnr_encrypted"] = float(psnr(p, test_y).mean())
            prior = target.mean(0, keepdim=True).expand(p.shape).contiguous()
            prior = (prior * 255).round().to(torch.uint8) if p.dtype == torch.uint8 else prior.to(p.dtype)
            result.metrics["ssim_prior"] = float(ssim(p, prior).mean())
        return result

    def _hooks(self, target: torch.Tensor, channels: int) -> dict:
        """``train_loop``'s ``loss_fn`` (and ``step``) for ``self.loss``."""
        if self.loss == "perceptual":
            feats = train_features(target, epochs=self.feature_epochs, batch_size=self.batch_size,
                                   width=self.width, seed=self.seed)
            return {"loss_fn": PerceptualObjective(feats, weight=self.perceptual_weight)}
        if self.loss == "gan":
            gan = GanObjective(PatchDiscriminator(channels, width=self.width),
                               adversarial_weight=self.adversarial_weight)
            return {"loss_fn": gan.loss, "step": gan.step}
        return {"loss_fn": lambda m, b: (F.l1_loss(m(b[0]), b[1]), {"n": len(b[0])})}
