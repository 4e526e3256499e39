"""Ground truth for scoring attacks: the rearrangement a fixed-key scheme applies.

Only evaluation code uses this (it reads the scheme's derived parameters,
which an attacker does not have).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..schemes import Scheme
from .base import AttackError, RecoveredPermutation

__all__ = ["true_permutation", "score_permutation"]


def true_permutation(scheme: Scheme, chw: Sequence[int]) -> RecoveredPermutation:
    """The scheme's own rearrangement in :class:`RecoveredPermutation` form.

    Supports ``pixel`` (shared or per-channel), every ``block`` preset, and a
    composition whose one fixed-key step is one of these (the other steps are
    per-image: ``mix+pixel``, ``visualmixer-seed+pixel``; that step's
    rearrangement is what an attack on the chain is after).

    Raises:
        AttackError: for schemes that are not a fixed-key rearrangement.
    """
    c, h, w = (int(v) for v in chw)
    name = type(scheme).name
    if name == "pixel":
        if scheme.per_channel:
            perms = scheme.key.permutations(f"pixel/perm-per-channel/{h}x{w}", c, h * w)
            flat = (perms + torch.arange(c)[:, None] * (h * w)).reshape(-1)
            mask = scheme.flip_mask(h, w).repeat(c) if scheme.negapos else None
            return RecoveredPermutation((c, h, w), flat, mask)
        mask = scheme.flip_mask(h, w).clone() if scheme.negapos else None  # over encrypted positions
        return RecoveredPermutation((c, h, w), scheme.permutation(h, w).clone(), mask, spatial=True)
    if name == "block":
        p = scheme.params((c, h, w))
        return RecoveredPermutation((c, h, w), p.index.cpu().clone(),
                                    None if p.mask is None else p.mask.cpu().clone(), nibbles=p.nibbles)
    if name == "compose":  # a chain whose one keyed step is a fixed rearrangement: that step's key is the secret
        fixed = [step for step in scheme.steps if not step.per_image]
        if len(fixed) == 1 and fixed[0].key is not None:
            return true_permutation(fixed[0], chw)
    raise AttackError(f"scheme {name!r} is not a fixed-key rearrangement; no permutation to compare with")


def score_permutation(recovered: RecoveredPermutation, truth: RecoveredPermutation) -> dict[str, float]:
    """Fractions of units whose source (and flip) were recovered correctly."""
    r, t = recovered.value_level(), truth.value_level()
    if r.nibbles != t.nibbles or r.index.numel() != t.index.numel():
        raise AttackError("the recovered and true rearrangements act on different units; cannot compare")
    same = r.index.cpu() == t.index.cpu()
    out = {"fraction_recovered": float(same.double().mean())}
    if r.mask is not None or t.mask is not None:
        rm = torch.zeros_like(same) if r.mask is None else r.mask.cpu()
        tm = torch.zeros_like(same) if t.mask is None else t.mask.cpu()
        out["fraction_recovered_with_flips"] = float((same & (rm == tm)).double().mean())
    return out
