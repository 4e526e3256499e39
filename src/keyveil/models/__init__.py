"""Key-aware models: plain models that run on encrypted images (docs/design.md §4).

* :func:`keyed` — a plain CNN (``pixel`` scheme; modes ``input``,
  ``features``, ``deformable``; torchvision and timm classifiers incl.
  ConvNeXt, and segmentation-style models that return maps) or torchvision
  ViT (``vit`` block scheme) converted with the key: same outputs on
  encrypted images as the plain model on plain ones, useless without the key.
* :func:`validate` — every operation a CNN conversion cannot carry, in one list.
* :func:`patch_invariant_vit`, :func:`mix_invariant_vit` — Hao et al.'s models,
  invariant to the per-image ``patch`` and ``mix`` schemes (no key needed);
  :func:`block_invariant_vit` — invariant to ``block-per-image`` (a fresh key
  per image). A patch-order-invariant ViT converted with :func:`keyed` follows
  the keyed-plus-invariant ``vit+patch`` exactly.
* :func:`save_keyed` / :func:`load_keyed` — checkpoints with or without the key material.
"""

from __future__ import annotations

from .checkpoint import load_keyed, save_keyed
from .errors import KeyedModelError, SelfCheckError, UnsupportedModelError, UnsupportedOp
from .invariant import (
    BlockInvariantPatchEmbed,
    InvariantViT,
    MixInvariantPatchEmbed,
    ReferencePositionalEncoding,
    block_invariant_vit,
    create_invariant_vit,
    mix_invariant_vit,
    patch_invariant_vit,
)
from .keyed import KeyedConfig, keyed, self_check, validate
from .keyed_cnn import feature_permutation

__all__ = [
    "keyed",
    "validate",
    "self_check",
    "KeyedConfig",
    "feature_permutation",
    "save_keyed",
    "load_keyed",
    "patch_invariant_vit",
    "mix_invariant_vit",
    "block_invariant_vit",
    "create_invariant_vit",
    "BlockInvariantPatchEmbed",
    "InvariantViT",
    "MixInvariantPatchEmbed",
    "ReferencePositionalEncoding",
    "KeyedModelError",
    "UnsupportedModelError",
    "SelfCheckError",
    "UnsupportedOp",
]
