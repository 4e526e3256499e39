"""Ciphertext-only attack on a fixed-key pixel permutation (docs/design.md §5).

Natural images are smooth: across a dataset, neighbouring pixels are far more
correlated than distant ones. A fixed permutation moves the pixels but keeps
every pixel's values across the dataset, so the (partial) correlation matrix of
the encrypted positions is the plain one with rows and columns permuted. The
attack reads grid neighbours off the partial correlations, grows the grid from
them and refines it by annealing (:mod:`keyveil.attacks.layout`).

The layout comes back up to the 8 symmetries of the grid (rotations and
mirror images): correlations cannot tell left from right. A person looking at
the un-scrambled images fixes that at a glance; the reported ``ssim_best_symmetry``
takes the best of the 8 (scored with the plain images), ``ssim`` does not.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.quality import ssim
from ..schemes import Scheme
from .base import Attack, AttackError, Cost, KeyRecoveryResult, RecoveredPermutation, measure, register_attack
from .layout import (
    grid_objective,
    grow_layout,
    partial_correlation,
    recentre,
    recover_flips,
    refine_flips,
    refine_layout,
    total_variation_table,
)
from .truth import true_permutation

__all__ = ["CiphertextOnly", "grid_symmetries", "neighbour_accuracy"]


def grid_symmetries(h: int, w: int) -> list[torch.Tensor]:
    """Index maps of the symmetries of an ``h×w`` grid (8 if square, else 4).

    Each map ``s`` reorders a flattened image: ``img.flatten()[s]``.
    """
    grid = torch.arange(h * w).view(h, w)
    maps = []
    for k in range(4 if h == w else 2):
        g = torch.rot90(grid, 2 * k if h != w else k)
        maps += [g.reshape(-1), g.flip(1).reshape(-1)]
    return maps


def neighbour_accuracy(layout: torch.Tensor, origin: torch.Tensor, h: int, w: int) -> float:
    """Fraction of adjacent cells of ``layout`` whose pixels are adjacent in the original.

    Args:
        layout: ``(h*w,)`` encrypted position placed at each grid cell.
        origin: ``(h*w,)`` original position of each encrypted position.
    """
    pos = origin[layout].view(h, w)
    r, c = pos // w, pos % w
    horiz = (r[:, 1:] - r[:, :-1]).abs() + (c[:, 1:] - c[:, :-1]).abs() == 1
    vert = (r[1:, :] - r[:-1, :]).abs() + (c[1:, :] - c[:-1, :]).abs() == 1
    return float(torch.cat([horiz.reshape(-1), vert.reshape(-1)]).double().mean())


@register_attack
class CiphertextOnly(Attack):
    """Rebuild a fixed pixel permutation (and ``pixel-np``'s flips) from ciphertexts alone.

    The pipeline is in :mod:`keyveil.attacks.layout`: partial correlations of
    the encrypted positions across the ciphertexts (their magnitudes when
    ``flips``, the signs then give the flips), greedy growth of the grid,
    re-centring, then batched annealing of partial-correlation template plus
    image smoothness.

    Args:
        neighbours: strongest partners per position the growth scores.
        ridge: regularization of the correlation matrix before its inversion.
        anneal_seconds: CPU seconds of the batched annealing (0 to skip).
        radius: largest row/column distance of two swapped cells.
        smoothness: weight of the total variation (mean absolute difference of
            adjacent reconstructed values, normalized) in the annealing.
        flips: also recover per-position negative–positive flips (``pixel-np``).
        starts: growths tried per template (from strong positions; the best-fitting one is kept).
        seed: seed of the annealing's random choices.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("pixel", Key.generate())
        >>> k = torch.exp(-torch.arange(-3, 4.0).pow(2) / 1.3)
        >>> k = (k[:, None] * k)[None, None] / k.sum() ** 2
        >>> x = torch.nn.functional.conv2d(torch.randn(3000, 1, 18, 18), k)  # smooth 12x12 images
        >>> x = (x / x.std() * 40 + 128).round().clamp(0, 255).to(torch.uint8)
        >>> r = CiphertextOnly(anneal_seconds=1).run(ciphertexts=s.encrypt(x), reference=s)
        >>> r.metrics["neighbour_accuracy"] > 0.7  # a random layout: about 0.03
        True
    """

    name = "ciphertext-only"
    description = "partial correlations across many ciphertexts -> grown grid layout of a pixel permutation (+flips)"

    def __init__(
        self, *, neighbours: int = 12, ridge: float = 0.01, anneal_seconds: float = 20.0, radius: int = 3,
        smoothness: float = 0.1, flips: bool = False, starts: int = 3, seed: int = 0,
    ) -> None:
        if neighbours < 4 or ridge <= 0 or radius < 1 or anneal_seconds < 0:
            raise AttackError("need neighbours >= 4, ridge > 0, radius >= 1, anneal_seconds >= 0")
        self.neighbours, self.ridge, self.anneal_seconds = int(neighbours), float(ridge), float(anneal_seconds)
        self.radius, self.smoothness, self.flips, self.seed = int(radius), float(smoothness), bool(flips), int(seed)
        self.starts = max(1, int(starts))

    def run(
        self,
        *,
        ciphertexts: torch.Tensor,
        test_encrypted: torch.Tensor | None = None,
        test_plain: torch.Tensor | None = None,
        reference: Scheme | None = None,
    ) -> KeyRecoveryResult:
        """Recover the layout (and flips).

        Args:
            ciphertexts: ``(N,C,H,W)`` images encrypted under one ``pixel`` key.
            test_encrypted: images to un-scramble with the recovered layout
                (default: the first 100 ciphertexts).
            test_plain: their plain versions, only to score (adds ``ssim``,
                ``ssim_best_symmetry``, ``ssim_encrypted``).
            reference: the attacked scheme, only to score (adds ``neighbour_accuracy``,
                and ``flip_accuracy`` when it flips).
        """
        y = torch.as_tensor(ciphertexts)
        if y.dim() != 4 or y.shape[0] < 2:
            raise AttackError(f"ciphertexts must be a batch (N,C,H,W) with N >= 2, got {tuple(y.shape)}")
        n, c, h, w = y.shape
        cost = Cost(ciphertexts=n)
        with measure(cost):
            samples = y.reshape(n * c, h * w).float()
            s = partial_correlation(samples, self.ridge)
            mask = None
            if self.flips:
                sign = recover_flips(s)
                white = 255.0 if y.dtype == torch.uint8 else 1.0
                if bool((torch.where(sign < 0, white - samples, samples).median(0).values < white / 2).float().mean()
                        < 0.5):
                    sign = -sign  # one global negation is invisible to correlations: take dark backgrounds
                s.mul_(sign[:, None]).mul_(sign[None, :])
                mask = sign < 0
                samples = torch.where(mask, white - samples, samples)
            # the diagonal neighbours' sign in the template depends on the images: keep the best-fitting growth
            # and a growth can turn a region the wrong way: several starts, keep the best-fitting growth
            strong = s.topk(4, dim=1).values.sum(1).argsort(descending=True)
            starts = strong[torch.linspace(0, len(strong) // 4, self.starts).long()].tolist()
            grown = {(d, q): grow_layout(s, h, w, candidates=self.neighbours, diagonal=d, start=q)
                     for d in (-1.0, 0.0, 1.0) for q in starts}
            diagonal, _ = best = max(grown, key=lambda k: float(grid_objective(grown[k], s, h, w)))
            layout = grown[best]
            spread = samples.std(0)
            axis = s
            if self.smoothness > 0:
                tv = total_variation_table(samples)
                axis = tv.mul_(-self.smoothness / float(tv.mean().clamp_min(1e-12))).add_(s)  # in place: P² floats
            layout = recentre(layout, s, spread, h, w)
            tried = 0
            if self.anneal_seconds > 0:
                layout, tried = refine_layout(layout, axis, diagonal * s, h, w, seconds=self.anneal_seconds,
                                              radius=self.radius, seed=self.seed)
                layout = recentre(layout, s, spread, h, w)
            if mask is not None:
                mask = mask ^ refine_flips(layout, samples, h, w, white)
            index = torch.empty_like(layout)
            index[layout] = torch.arange(h * w)
            recovered = RecoveredPermutation((c, h, w), index, mask, spatial=True)
            test_y = y[:100] if test_encrypted is None else torch.as_tensor(test_encrypted)
            recon = recovered.decrypt(test_y)
        result = KeyRecoveryResult(self.name, reconstructions=recon, cost=cost, recovered=recovered,
                                   details={"layout": layout, "swaps_tried": tried,
                                                                               "diagonal": diagonal})
        result.metrics["ciphertexts"] = float(n)
        if reference is not None:
            origin = true_permutation(reference, (c, h, w))
            if not origin.spatial:
                raise AttackError("the ciphertext-only attack targets the shared pixel permutation ('pixel')")
            result.metrics["neighbour_accuracy"] = neighbour_accuracy(layout, origin.index, h, w)
            if origin.mask is not None:
                got = torch.zeros(h * w, dtype=torch.bool) if mask is None else mask.cpu()
                acc = float((got == origin.mask.cpu()).double().mean())
                result.metrics["flip_accuracy"] = acc
                result.metrics["flip_accuracy_up_to_negation"] = max(acc, 1 - acc)  # correlations cannot tell
        if test_plain is not None:
            plain = torch.as_tensor(test_plain)
            result.metrics["ssim_encrypted"] = float(ssim(plain, test_y).mean())
            result.metrics["ssim"] = float(ssim(plain, recon).mean())
            flat = recon.reshape(*recon.shape[:2], h * w)
            scores = [float(ssim(plain, flat[..., s].reshape(recon.shape)).mean()) for s in grid_symmetries(h, w)]
            best = int(np.argmax(scores))
            result.metrics["ssim_best_symmetry"] = scores[best]
            result.details["symmetry"] = best
        result.metrics["cpu_seconds"] = cost.cpu_seconds
        return result
