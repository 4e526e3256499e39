"""Known-plaintext block matching for block-scrambling schemes (EtC and its kin).

EtC moves every M×M block as a whole and changes it by a key-chosen rotation/flip
(K2), negative–positive transform (K3) and colour-channel order (K4). With a single
known (plain, encrypted) pair, every encrypted block is found among the plain blocks
under one of the 8 × 2 × 6 = 96 transforms — block by block, no image statistics
needed — and the recovered key decrypts every other image encrypted under it.
Blocks that occur more than once (flat background) are interchangeable, so they cost
nothing in the reconstruction. (Our construction of the attack the issue describes;
the idea is that of Chuman et al.'s block-wise analysis, IEICE 2018.)
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import torch

from ..schemes import Scheme
from .base import Attack, AttackError, Cost, KeyRecoveryResult, RecoveredPermutation, measure, register_attack
from .jigsaw import dihedral
from .truth import score_permutation, true_permutation

__all__ = ["BlockKnownPlaintext", "block_transforms"]


def block_transforms(channels: int, *, rotations: bool = True, negapos: bool = True,
                     channel_orders: bool = True) -> list[tuple[int, tuple[int, ...], bool]]:
    """Every ``(dihedral k, channel order, negated)`` a block may have been given."""
    ks = range(8) if rotations else [0]
    orders = list(itertools.permutations(range(channels))) if channel_orders and channels > 1 else [
        tuple(range(channels))]
    flips = (False, True) if negapos else (False,)
    return [(k, o, f) for k in ks for o in orders for f in flips]


def _blocks(x: torch.Tensor, m: int) -> torch.Tensor:
    """``(..., C, H, W)`` -> ``(..., N, C, m, m)`` in row-major block order."""
    *lead, c, h, w = x.shape
    k = len(lead)
    b = x.reshape(*lead, c, h // m, m, w // m, m)
    b = b.permute(*range(k), k + 1, k + 3, k, k + 2, k + 4)  # (..., nh, nw, C, m, m)
    return b.reshape(*lead, (h // m) * (w // m), c, m, m)


def _apply(b: torch.Tensor, k: int, order: tuple[int, ...]) -> torch.Tensor:
    """Rotate/flip and reorder channels of blocks ``(..., C, m, m)``."""
    return dihedral(b[..., list(order), :, :], k)


@register_attack
class BlockKnownPlaintext(Attack):
    """Recover a block-scrambling key (EtC) from known pairs by matching whole blocks.

    Args:
        block_size: the scheme's block size M (EtC: 4).
        rotations, negapos, channel_orders: which per-block transforms to search
            (all by default: 8 × 2 × 6 for RGB).

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("etc", Key.generate())
        >>> x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        >>> r = BlockKnownPlaintext().run(plain=x, encrypted=s.encrypt(x), reference=s)
        >>> r.metrics["fraction_recovered_with_flips"]
        1.0
        >>> other = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> bool(torch.equal(r.decrypt(s.encrypt(other)), other))
        True
    """

    name = "known-plaintext-blocks"
    description = "match whole blocks under rotation/flip, negative-positive and channel order from one known pair"

    def __init__(self, *, block_size: int = 4, rotations: bool = True, negapos: bool = True,
                 channel_orders: bool = True) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise AttackError(f"block_size must be a positive int, got {block_size!r}")
        self.block_size, self.rotations, self.negapos, self.channel_orders = (
            block_size, bool(rotations), bool(negapos), bool(channel_orders))

    def run(self, *, plain: torch.Tensor, encrypted: torch.Tensor, reference: Scheme | None = None
            ) -> KeyRecoveryResult:
        """Match the encrypted blocks of ``n`` pairs ``(n,C,H,W)`` to plain blocks.

        Returns:
            A :class:`KeyRecoveryResult`: ``fraction_determined`` (blocks with one
            possible source), the pairs decrypted as ``reconstructions``, and with
            ``reference`` the fraction of values whose source (and flip) is right.
        """
        plain, encrypted = torch.as_tensor(plain).cpu(), torch.as_tensor(encrypted).cpu()
        if plain.dim() == 3:
            plain, encrypted = plain[None], encrypted[None]
        if plain.shape != encrypted.shape or plain.dim() != 4:
            raise AttackError(f"plain and encrypted must both be (n,C,H,W), got {tuple(plain.shape)} and "
                              f"{tuple(encrypted.shape)}")
        n, c, h, w = plain.shape
        m = self.block_size
        if h % m or w % m:
            raise AttackError(f"image size {h}x{w} is not divisible by the block size {m}")
        white = 255 if plain.dtype == torch.uint8 else 1.0
        cost = Cost(pairs=n)
        with measure(cost):
            transforms = block_transforms(c, rotations=self.rotations, negapos=self.negapos,
                                          channel_orders=self.channel_orders)
            pb = _blocks(plain, m).transpose(0, 1)  # (N, n, C, m, m): a block across the pairs
            eb = _blocks(encrypted, m).transpose(0, 1).reshape(pb.shape[0], -1)
            nb = pb.shape[0]
            cands = torch.stack([
                (white - _apply(pb, k, o)) if f else _apply(pb, k, o) for k, o, f in transforms
            ], 1).reshape(nb * len(transforms), -1)  # row = block * T + transform
            _, inverse = torch.unique(torch.cat([cands, eb]), dim=0, return_inverse=True)
            gc, ge = inverse[: cands.shape[0]].tolist(), inverse[cands.shape[0]:].tolist()
            by_id: dict[int, list[int]] = defaultdict(list)
            for row, g in enumerate(gc):
                by_id[g].append(row)
            src_block, src_t, determined = [], [], []
            for j, g in enumerate(ge):
                rows = by_id.get(g)
                if not rows:
                    raise AttackError(
                        f"encrypted block {j} matches no plain block under any searched transform: not this block "
                        "size, another step (an in-block shuffle?), another key, or lossy pairs")
                src_block.append(rows[0] // len(transforms))
                src_t.append(rows[0] % len(transforms))
                determined.append(len({r // len(transforms) for r in rows}) == 1)
            recovered = self._key(c, h, w, src_block, [transforms[t] for t in src_t])
            recon = recovered.decrypt(encrypted)
        result = KeyRecoveryResult(self.name, reconstructions=recon, cost=cost, recovered=recovered)
        result.metrics["pairs"] = float(n)
        result.metrics["fraction_determined"] = float(torch.tensor(determined, dtype=torch.float64).mean())
        if reference is not None:
            result.metrics.update(score_permutation(recovered, true_permutation(reference, (c, h, w))))
        return result

    def _key(self, c: int, h: int, w: int, src_block: list[int],
             chosen: list[tuple[int, tuple[int, ...], bool]]) -> RecoveredPermutation:
        """Write the block matches as a value-level permutation with flips."""
        m = self.block_size
        ids = _blocks(torch.arange(c * h * w).view(c, h, w), m)  # (N, C, m, m) value indices per block
        src = torch.tensor(src_block)
        out_blocks = torch.empty_like(ids)
        for t in set(chosen):  # one batched transform per distinct (rotation, channel order, flip)
            rows = torch.tensor([j for j, ch in enumerate(chosen) if ch == t])
            out_blocks[rows] = _apply(ids[src[rows]], t[0], t[1])
        flips = torch.tensor([f for _, _, f in chosen]).view(-1, 1, 1, 1).expand_as(out_blocks)
        nh, nw = h // m, w // m

        def unblock(b: torch.Tensor) -> torch.Tensor:
            return b.view(nh, nw, c, m, m).permute(2, 0, 3, 1, 4).reshape(-1)

        mask = unblock(flips.contiguous())
        return RecoveredPermutation((c, h, w), unblock(out_blocks), mask if bool(mask.any()) else None)
