"""``pixel`` — PrivDL's fixed-key pixel shuffle (docs/design.md §3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..keys import Key
from .base import Scheme, log2_factorial, max_value
from .functional import flip_values, gather_flat, gather_spatial, invert_permutation
from .registry import register_preset, register_scheme

__all__ = ["PixelShuffle", "pixel_permutation", "pixel_flip_mask"]


def pixel_permutation(key: Key, height: int, width: int) -> torch.Tensor:
    """The key's permutation π of the ``height*width`` positions.

    Encryption is ``y[..., k] = x[..., π[k]]`` on the flattened spatial axis.
    Keyed models use this function to follow the key.
    """
    return key.permutation(f"pixel/perm/{height}x{width}", height * width)


def pixel_flip_mask(key: Key, height: int, width: int) -> torch.Tensor:
    """The key's negative–positive mask: one bool per *encrypted* position, shared by the channels."""
    return key.bits(f"pixel/negapos/{height}x{width}", height * width)


@register_scheme
class PixelShuffle(Scheme):
    """One key-derived permutation of the H·W pixel positions, shared by all images.

    Args:
        key: the secret key.
        per_channel: give every channel its own permutation (visually stronger,
            but then no keyed CNN can exist, since convolutions mix channels).
        negapos: after the shuffle, flip ``v -> white - v`` at a key-chosen half
            of the positions (all channels of a position alike; EtC's
            negative–positive transform per pixel). It hides the brightness
            histogram that a shuffle keeps, and a keyed CNN still follows it
            exactly (the flip is undone position by position at its input).
            Preset ``pixel-np``.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("pixel", Key.generate())
        >>> x = torch.rand(4, 3, 28, 28)
        >>> y = s.encrypt(x)
        >>> bool(torch.equal(s.decrypt(y), x)), bool(torch.equal(y, x))
        (True, False)

    Notes:
        A fixed permutation is recovered from ⌈log_256(H·W)⌉ chosen images
        (Jolfaei et al., IEEE TIFS 2016); see ``keyveil.attacks`` and SECURITY.md.
        Measured re-identification of AT&T faces (``keyveil security-report``,
        section reidentify; chance 2.5 %, plain photos 93.0 %): at a glance
        9.0 % top-1 for ``pixel`` (a shuffle keeps the brightness histogram)
        and 4.5 % for ``pixel-np``; with an encryption oracle 93.0 % for both
        (the key is recovered, and a fixed permutation keeps distances).
    """

    name = "pixel"
    description = "fixed-key shuffle of pixel positions (PrivDL)"

    def __init__(self, key: Key | None = None, *, per_channel: bool = False, negapos: bool = False) -> None:
        super().__init__(key)
        self.per_channel = bool(per_channel)
        self.negapos = bool(negapos)

    def params_dict(self) -> dict[str, Any]:
        return {"per_channel": self.per_channel, "negapos": self.negapos}

    def flip_mask(self, height: int, width: int) -> torch.Tensor:
        """The negative–positive mask over encrypted positions (``negapos=True``)."""
        return pixel_flip_mask(self.key, height, width)

    def _flip(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        mask = self._cached(("mask", h, w, y.device), lambda: self.flip_mask(h, w).view(h, w).to(y.device))
        return flip_values(y, mask, max_value(y))

    def permutation(self, height: int, width: int) -> torch.Tensor:
        """π for this size (shared-permutation mode)."""
        return pixel_permutation(self.key, height, width)

    def _indices(self, c: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        def make() -> tuple[torch.Tensor, torch.Tensor]:
            if self.per_channel:
                perms = self.key.permutations(f"pixel/perm-per-channel/{h}x{w}", c, h * w)
                flat = (perms + torch.arange(c)[:, None] * (h * w)).reshape(-1)
            else:
                flat = self.permutation(h, w)
            return flat.to(device), invert_permutation(flat).to(device)

        return self._cached((c if self.per_channel else 0, h, w, device), make)

    def _encrypt(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        fwd, _ = self._indices(c, h, w, x.device)
        y = gather_flat(x, fwd) if self.per_channel else gather_spatial(x, fwd)
        return self._flip(y) if self.negapos else y

    def _decrypt(self, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        _, inv = self._indices(c, h, w, y.device)
        y = self._flip(y) if self.negapos else y
        return gather_flat(y, inv) if self.per_channel else gather_spatial(y, inv)

    def key_space_bits(self, shape: Sequence[int]) -> float:
        c, h, w = (3, *shape) if len(shape) == 2 else tuple(shape)
        return log2_factorial(h * w) * (c if self.per_channel else 1) + (h * w if self.negapos else 0)


register_preset("pixel-np", PixelShuffle, "fixed-key pixel shuffle + negative-positive flip per position "
                "(PrivDL x EtC; a keyed CNN follows it exactly)", negapos=True)
