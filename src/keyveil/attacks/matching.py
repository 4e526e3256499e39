"""Matching value vectors across known (plain, encrypted) pairs, with negative–positive flips.

The core of every known-plaintext attack on a fixed-key rearrangement: each output
unit (a position, a value or a 4-bit nibble) holds, across ``n`` known pairs, a
vector that must equal its source unit's vector — or that vector's complement
``white - v`` when the key flips it (EtC's and ViT's negative–positive step,
``pixel-np``, LE's nibble flips).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .base import AttackError

__all__ = ["match_units"]


def match_units(
    plain: torch.Tensor, encrypted: torch.Tensor, *, white: int | float, flips: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Find, for every encrypted unit, its source unit (and whether it was flipped).

    Args:
        plain: ``(U, n)`` the plain units' vectors across the ``n`` pairs.
        encrypted: ``(U, n)`` the encrypted units' vectors.
        white: the largest value (255, 15 for nibbles, 1.0 for floats).
        flips: also match complements ``white - v``.

    Returns:
        ``(index, mask, determined)``: ``encrypted[j] == flip(plain[index[j]], mask[j])``;
        ``mask`` is ``None`` without ``flips``; ``determined[j]`` is true when only one
        (source, flip) fits, so the match is certain. Units sharing a vector (flat
        backgrounds) are assigned within their group in order — right by chance only.

    Raises:
        AttackError: some encrypted unit matches no plain unit (not one key, or lossy pairs).

    Examples:
        >>> p = torch.tensor([[1, 2], [3, 4], [5, 6]])
        >>> e = torch.tensor([[250, 249], [1, 2], [3, 4]])  # unit 0 is 255 - unit 2
        >>> idx, mask, det = match_units(p, e, white=255, flips=True)
        >>> idx.tolist(), mask.tolist(), det.tolist()
        ([2, 0, 1], [True, False, False], [True, True, True])
    """
    units = plain.shape[0]
    rows = [plain, encrypted] if not flips else [plain, white - plain, encrypted]
    _, inverse = torch.unique(torch.cat(rows).cpu(), dim=0, return_inverse=True)
    gp = inverse[:units]
    ge = inverse[-units:]
    if not flips:
        sp, op = torch.sort(gp, stable=True)
        se, oe = torch.sort(ge, stable=True)
        if not torch.equal(sp, se):
            raise AttackError(
                "the encrypted values are not a rearrangement of the plain ones under one permutation "
                "(different keys, flips, or lossy storage?); known-plaintext matching needs exact pairs"
            )
        idx = torch.empty(units, dtype=torch.int64)
        idx[oe] = op
        counts = torch.bincount(gp, minlength=int(inverse.max()) + 1)
        return idx, None, counts[ge] == 1
    gq = inverse[units:2 * units]
    candidates: dict[int, list[tuple[int, bool]]] = defaultdict(list)
    for i, (a, b) in enumerate(zip(gp.tolist(), gq.tolist())):
        candidates[a].append((i, False))
        if b != a:
            candidates[b].append((i, True))
    used = torch.zeros(units, dtype=torch.bool).tolist()
    cursor: dict[int, int] = defaultdict(int)
    idx_list, mask_list, det_list = [], [], []
    for j, g in enumerate(ge.tolist()):
        cands = candidates.get(g, [])
        k = cursor[g]
        while k < len(cands) and used[cands[k][0]]:
            k += 1
        if k == len(cands):
            raise AttackError(
                f"encrypted unit {j} matches no unused plain unit or its complement: the pairs are not one "
                "rearrangement with flips under one key (different keys, lossy storage, or another scheme?)"
            )
        i, flip = cands[k]
        used[i] = True
        cursor[g] = k + 1
        idx_list.append(i)
        mask_list.append(flip)
        det_list.append(len(cands) == 1)
    return (torch.tensor(idx_list, dtype=torch.int64), torch.tensor(mask_list, dtype=torch.bool),
            torch.tensor(det_list, dtype=torch.bool))
