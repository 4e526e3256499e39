"""Attacks on per-image schemes seen patch by patch (``block-per-image``, ``vit+patch``).

``vit+patch`` applies one secret transform to every p×p patch and then a fresh
patch order per image. Cut into patches, its ciphertexts are a data set of p×p
images under one *fixed* key, which the fixed-key attacks take as they are:

* chosen-plaintext: images whose patches are all the same are untouched by any
  patch order, so the oracle on the p×p image tiled over the whole image is a
  fixed-key oracle of p×p images;
* ciphertext-only: the patches of many ciphertexts, as p×p images.

The recovered key undoes the in-patch step; what is left is the ``patch``
scheme's jigsaw (a fresh patch order per image). ``block-per-image`` shares no
key across images (nor across the blocks of one image): the key attacks do not
apply, and :func:`not_applicable` says why.
"""

from __future__ import annotations

import torch

from ..schemes import Scheme
from ..schemes.block import BlockScramble
from ..schemes.compose import ComposedScheme
from ..schemes.hao import PatchShuffle, from_patches, to_patches
from ..schemes.per_image_block import BlockPerImage
from .base import RecoveredPermutation

__all__ = ["keyed_patch_step", "not_applicable", "KEYED_PATCH_REASONS", "patches", "unpatch", "tiled_oracle", "patch_truth"]

_FRESH = ("no key to recover: every image gets a fresh key (block order, turns, signs), nothing is shared "
          "across images")
_REASONS = {
    "chosen-plaintext": _FRESH, "known-plaintext": _FRESH + "; a pair reveals only its own image's key",
    "ciphertext-only": "no fixed layout: the block order is fresh per image, so position statistics carry no key",
    "key-from-model": "no key in the model: the invariant ViT tolerates every per-image key without holding one",
}


KEYED_PATCH_REASONS = {
    "known-plaintext": ("covered by ciphertext-only: a known-plaintext attacker has the ciphertexts too, and "
                        "they alone give up the in-patch key (the ciphertext-only row)"),
    "key-from-model": ("covered by ciphertext-only: whoever holds the model trained on these ciphertexts has "
                       "them, and they alone give up the in-patch key (the ciphertext-only row)"),
    "jigsaw": ("not applicable directly: the keyed in-patch shuffle leaves no patch edges to match; once "
               "ciphertext-only recovers that key, what is left is the patch scheme (its jigsaw row)"),
}
"""Why an attack is not run on a ``vit+patch``-like chain (the report's cells say the same)."""


def not_applicable(attack: str, scheme: Scheme) -> str:
    """Why ``attack`` does not apply to ``scheme`` (``""`` when it does, or when this module has no say)."""
    if isinstance(scheme, BlockPerImage):
        return _REASONS.get(attack, "")
    if keyed_patch_step(scheme) is not None:
        return KEYED_PATCH_REASONS.get(attack, "")
    return ""


def keyed_patch_step(scheme: Scheme) -> BlockScramble | None:
    """The keyed in-patch step of a ``vit+patch``-like chain (a block step without block scramble, then patch
    orders of the same size), or ``None``."""
    if not isinstance(scheme, ComposedScheme):
        return None
    blocks = [s for s in scheme.steps if isinstance(s, BlockScramble)]
    rest = [s for s in scheme.steps if not isinstance(s, BlockScramble)]
    if len(blocks) != 1 or blocks[0].scramble or not rest:
        return None
    if not all(isinstance(s, PatchShuffle) and s.patch_size == blocks[0].block_size for s in rest):
        return None
    return blocks[0]


def patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B,C,H,W)`` -> ``(B*N, C, p, p)``: every patch as an image."""
    t = to_patches(x, p)
    return t.reshape(-1, *t.shape[2:])


def unpatch(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patches` for images shaped like ``like``."""
    b, c, h, w = like.shape
    p = t.shape[-1]
    return from_patches(t.reshape(b, -1, c, p, p), h, w)


def tiled_oracle(scheme: Scheme, chw: tuple[int, int, int], p: int):
    """A fixed-key oracle of p×p images: each tiled over a ``chw`` image, encrypted, its first patch kept."""
    _, h, w = chw

    def oracle(x: torch.Tensor) -> torch.Tensor:
        y = scheme.encrypt(x.repeat(1, 1, h // p, w // p))
        return y[..., :p, :p].contiguous()

    return oracle


def patch_truth(step: BlockScramble, chw: tuple[int, int, int]) -> RecoveredPermutation:
    """The in-patch step's own transform of one p×p patch of ``chw`` images, to score a recovered key
    (block keys are derived per image geometry, so it is read from the full image's parameters)."""
    c, h, w = chw
    p = step.block_size
    params = step.params(chw)
    ci, r, col = torch.meshgrid(torch.arange(c), torch.arange(p), torch.arange(p), indexing="ij")
    out = (ci * h * w + r * w + col).reshape(-1)  # the first patch's elements in the full image
    src = params.index.cpu()[out]
    local = (src // (h * w)) * p * p + (src % (h * w) // w) * p + src % w
    mask = None if params.mask is None else params.mask.cpu()[out].clone()
    return RecoveredPermutation((c, p, p), local, mask)
