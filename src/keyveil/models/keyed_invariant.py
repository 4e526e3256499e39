"""Keyed invariant ViT: a fixed block key folded into :class:`InvariantViT`'s patch embedding.

The keyed-plus-invariant composition (``vit+patch``, our reading of issue 20)
encrypts with a secret in-patch transform, the same on every p×p patch (the
``vit`` block step: a shared pixel permutation and negative–positive mask),
then a fresh patch order per image. The in-patch transform is one invertible
affine map of each flattened patch, folded exactly into the patch embedding
``patch_embed.proj`` (as :mod:`keyveil.models.keyed_vit` does for torchvision);
a fixed block scramble K1, if the block step has one, becomes a permutation of
the learned position table (or nothing, with the order-free reference
encoding); the per-image patch order is ignored by an order-invariant ViT
(``position="reference"`` or ``None``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..schemes import Scheme
from ..schemes.block import BlockScramble
from ..schemes.compose import ComposedScheme
from ..schemes.hao import PatchShuffle
from .errors import KeyedModelError
from .invariant import InvariantViT, PatchEmbed
from .keyed_vit import block_fold, fold_patch_conv

__all__ = ["keyed_invariant_vit", "invariant_block_step"]


def invariant_block_step(scheme: Scheme, model: InvariantViT) -> BlockScramble:
    """The block step ``model`` must follow: ``scheme`` itself, or the one keyed step of a chain whose other
    steps are patch orders the model ignores (``vit+patch``)."""
    if isinstance(scheme, BlockScramble):
        return scheme
    if isinstance(scheme, ComposedScheme):
        blocks = [s for s in scheme.steps if isinstance(s, BlockScramble)]
        others = [s for s in scheme.steps if not isinstance(s, BlockScramble)]
        if len(blocks) == 1 and all(isinstance(s, PatchShuffle) and s.patch_size == model.patch_size
                                    for s in others):
            if others and model.position == "learned":
                raise KeyedModelError("a per-image patch order needs an order-invariant ViT "
                                      "(position='reference' or None), not a learned position table")
            return blocks[0]
    raise KeyedModelError(
        "an InvariantViT follows a block scheme (e.g. create('vit', key, scramble=False, block_size=p)) or a "
        f"chain of one block step and patch orders of the ViT's patch size (vit+patch); got {scheme!r}")


def keyed_invariant_vit(model: InvariantViT, scheme: Scheme, *, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> nn.Module:
    """A copy of ``model`` whose logits on ``scheme``'s ciphertexts equal ``model``'s on plain images.

    Raises:
        KeyedModelError: the model's embedding is not a plain patch conv, the block size differs from the
            patch size, or the block step is not the same on every block (see :func:`block_fold`).
    """
    if not isinstance(model.patch_embed, PatchEmbed):
        raise KeyedModelError(f"only the 'patch' embedding folds a key; this InvariantViT has {model.embedding!r}")
    step = invariant_block_step(scheme, model)
    p = model.patch_size
    if step.block_size != p:
        raise KeyedModelError(f"the block step's block size {step.block_size} must equal the ViT's patch size {p}")
    conv = model.patch_embed.proj
    order, src, flip = block_fold(step, (conv.in_channels, *model.image_size))
    out = copy.deepcopy(model)
    fold_patch_conv(out.patch_embed.proj, src.to(conv.weight.device), flip, mean=mean, std=std)
    if out.pos_embedding is not None:
        with torch.no_grad():
            out.pos_embedding.copy_(out.pos_embedding[:, order.to(out.pos_embedding.device)])
    return out
