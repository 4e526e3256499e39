"""``block-per-image`` — block scrambling with a fresh key per image (docs/design.md §3.3).

**Our reading** of the Kiya lab's latest line, "restricted random permutations"
(Aso et al., APSIPA ASC 2024; Hirose et al., IEEE Access 2025): every image is
encrypted with its own independent key, and the transforms are restricted to
those a model can be built to tolerate exactly, so that no key is shared with
the model or across images. Here each image gets a fresh

* order of its M×M blocks (the blocks' positions shuffled), and
* per block, one of the 8 rotations/flips of the square (``rotate``) and a
  negative–positive bit ``v -> white - v`` (``negapos``),

all drawn independently per image. A ViT without positional order whose patch
embedding is averaged over that group (:func:`keyveil.models.block_invariant_vit`)
gives the same logits on every encryption of an image. Nothing is shared across
images, so there is no key to recover: the chosen-, known-plaintext and
key-from-model attacks have nothing to attack, while the content of every block
is kept (up to its orientation and sign), so jigsaw solvers that try every
orientation and sign of a piece apply. With a key and a per-image ``nonce`` the
randomness is reproducible and :meth:`~BlockPerImage.decrypt` undoes it, as for
``patch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..keys import Key
from .base import Nonce, log2_factorial, per_image_uniform
from .block import _rotation_tables
from .errors import SchemeError
from .functional import invert_permutation
from .hao import _PatchGeometry, from_patches, to_patches
from .registry import register_scheme

__all__ = ["BlockPerImage", "PerImageBlockKeys"]


class PerImageBlockKeys:
    """One batch's per-image keys: ``order (B,N)``, ``turn (B,N)`` in 0..7, ``negate (B,N)`` bool.

    Block ``k`` of encrypted image ``b`` is plain block ``order[b, k]``, turned
    by dihedral element ``turn[b, k]`` (the row of ``block._rotation_tables``)
    and negated where ``negate[b, k]``.
    """

    def __init__(self, order: torch.Tensor, turn: torch.Tensor, negate: torch.Tensor) -> None:
        self.order, self.turn, self.negate = order, turn, negate


@register_scheme
class BlockPerImage(_PatchGeometry):
    """Per-image-key block scrambling: fresh block order, rotation/flip and negative–positive per image.

    Args:
        key: optional; with a key and a ``nonce`` per image, encryption is
            reproducible and invertible.
        block_size: M, the side of the blocks (H and W must be multiples).
        rotate: a random rotation/flip (one of 8) per block.
        negapos: a random negative–positive bit per block.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("block-per-image", Key.generate(), block_size=4)
        >>> x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
        >>> y = s.encrypt(x, nonce=[0, 1])
        >>> bool(torch.equal(s.decrypt(y, nonce=[0, 1]), x)), bool(torch.equal(s.encrypt(x), s.encrypt(x)))
        (True, False)

    Notes:
        See the module docstring (our reading of restricted random permutations).
        Block contents survive up to orientation and sign: faces and digits
        remain jigsaw puzzles, which is what the frontier and SECURITY.md measure.
    """

    name = "block-per-image"
    description = "fresh block order + rotation/flip + negative-positive per block, a new key per image (Kiya lab)"
    per_image = True
    needs_key = False

    def __init__(self, key: Key | None = None, *, block_size: int = 4, rotate: bool = True,
                 negapos: bool = True) -> None:
        super().__init__(key)
        if not isinstance(block_size, int) or block_size < 1:
            raise SchemeError(f"block_size must be a positive int, got {block_size!r}")
        self.block_size = self.patch_size = block_size
        self.rotate, self.negapos = bool(rotate), bool(negapos)

    def params_dict(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "rotate": self.rotate, "negapos": self.negapos}

    def image_keys(self, batch: int, n: int, *, generator: torch.Generator | None, nonce: Nonce | None,
                   device: torch.device) -> PerImageBlockKeys:
        """The per-image keys of a batch of images with ``n`` blocks each."""
        u = per_image_uniform(batch, 3 * n, label=f"block-per-image/{n}", key=self.key, generator=generator,
                              nonce=nonce, device=device)
        order = u[:, :n].argsort(dim=1)
        turn = (u[:, n:2 * n] * 8).long().clamp(max=7) if self.rotate else torch.zeros_like(order)
        negate = u[:, 2 * n:] < 0.5 if self.negapos else torch.zeros_like(order, dtype=torch.bool)
        return PerImageBlockKeys(order, turn, negate)

    def _keys_for(self, x: torch.Tensor, generator: torch.Generator | None, nonce: Nonce | None) -> PerImageBlockKeys:
        b, _, h, w = x.shape
        n = (h // self.block_size) * (w // self.block_size)
        return self.image_keys(b, n, generator=generator, nonce=nonce, device=x.device)

    def _turn(self, blocks: torch.Tensor, turn: torch.Tensor, inverse: bool) -> torch.Tensor:
        b, n, c, m, _ = blocks.shape
        tables = _rotation_tables(m).to(blocks.device)
        if inverse:
            tables = invert_permutation(tables)
        idx = tables[turn].view(b, n, 1, m * m).expand(b, n, c, m * m)
        return torch.gather(blocks.reshape(b, n, c, m * m), 3, idx).view(b, n, c, m, m)

    def _negate(self, blocks: torch.Tensor, negate: torch.Tensor) -> torch.Tensor:
        mask = negate.view(*negate.shape, 1, 1, 1)
        if blocks.dtype == torch.uint8:
            return torch.bitwise_xor(blocks, mask.to(torch.uint8) * 255)
        return torch.where(mask, 1 - blocks, blocks)

    def _encrypt(self, x: torch.Tensor, *, generator: torch.Generator | None, nonce: Nonce | None) -> torch.Tensor:
        b, c, h, w = x.shape
        m = self.block_size
        k = self._keys_for(x, generator, nonce)
        blocks = to_patches(x, m)
        n = blocks.shape[1]
        blocks = torch.gather(blocks, 1, k.order.view(b, n, 1, 1, 1).expand(-1, -1, c, m, m))
        if self.rotate:
            blocks = self._turn(blocks, k.turn, inverse=False)
        if self.negapos:
            blocks = self._negate(blocks, k.negate)
        return from_patches(blocks, h, w)

    @property
    def invertible(self) -> bool:  # type: ignore[override]
        return self.key is not None

    def not_invertible_reason(self) -> str:
        return ("every image's key is fresh randomness that is not kept; create the scheme with a key and pass "
                "the same nonce to encrypt and decrypt to make it invertible")

    def _decrypt(self, y: torch.Tensor, *, nonce: Nonce | None) -> torch.Tensor:
        if nonce is None:
            raise SchemeError("decrypting 'block-per-image' needs the nonce that was passed to encrypt")
        b, c, h, w = y.shape
        m = self.block_size
        k = self._keys_for(y, None, nonce)
        blocks = to_patches(y, m)
        if self.negapos:
            blocks = self._negate(blocks, k.negate)
        if self.rotate:
            blocks = self._turn(blocks, k.turn, inverse=True)
        inv = invert_permutation(k.order).view(b, blocks.shape[1], 1, 1, 1)
        return from_patches(torch.gather(blocks, 1, inv.expand(-1, -1, c, m, m)), h, w)

    def key_space_bits(self, shape: Sequence[int]) -> float:
        """Bits of one image's key (every image has its own)."""
        _, h, w = (3, *shape) if len(shape) == 2 else tuple(shape)
        n = (h // self.block_size) * (w // self.block_size)
        return log2_factorial(n) + n * (math.log2(8) * self.rotate + self.negapos)
