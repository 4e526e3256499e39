"""Known-plaintext recovery of per-value substitutions: XOR pads and additive shifts.

Rearrangement attacks assume every ciphertext value is some plain value moved
(and maybe negated). A scheme that instead changes values in place with a fixed
key stream — ``c = p XOR k`` or ``c = p + k (mod 256)`` per position, the textbook
stream-cipher mistake of reusing a pad — falls to known plaintext even faster: one
pair gives the pad, a second tells the two families apart. keyveil's own schemes are
not of this kind; the attack is here so that ``keyveil audit`` can measure users'
schemes that are. (Our construction; the two-time-pad argument is folklore.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Attack, AttackError, Cost, KeyRecoveryResult, measure, register_attack

__all__ = ["SubstitutionKnownPlaintext", "RecoveredSubstitution"]


@dataclass(frozen=True)
class RecoveredSubstitution:
    """A per-value XOR pad and additive shift, and which values follow which (uint8 images)."""

    shape: tuple[int, int, int]
    xor: torch.Tensor  # (C*H*W,) uint8 pad
    add: torch.Tensor  # (C*H*W,) uint8 shift
    is_xor: torch.Tensor  # bool: the value follows the pad
    is_add: torch.Tensor  # bool: the value follows the shift (and not the pad)

    def decrypt(self, y: torch.Tensor) -> torch.Tensor:
        """Undo the recovered substitution on ``(B,C,H,W)`` uint8 ciphertexts (other values kept)."""
        flat = y.reshape(y.shape[0], -1)
        out = flat.clone()
        out = torch.where(self.is_xor, flat ^ self.xor, out)
        out = torch.where(self.is_add, flat - self.add, out)  # uint8 arithmetic wraps mod 256
        return out.view_as(y)


@register_attack
class SubstitutionKnownPlaintext(Attack):
    """Recover a fixed per-value XOR pad or additive shift from ``n >= 2`` known pairs.

    Examples:
        >>> import torch
        >>> pad = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
        >>> x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        >>> r = SubstitutionKnownPlaintext().run(plain=x, encrypted=x ^ pad)
        >>> r.metrics["fraction_explained"]
        1.0
        >>> other = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> bool(torch.equal(r.decrypt(other ^ pad), other))
        True
    """

    name = "known-plaintext-substitution"
    description = "read a reused XOR pad or additive key stream off known (plain, encrypted) pairs"

    def run(self, *, plain: torch.Tensor, encrypted: torch.Tensor) -> KeyRecoveryResult:
        """Find, per value, a pad or shift consistent with every pair.

        Returns:
            A :class:`KeyRecoveryResult` with ``fraction_explained`` (values that follow one
            family across all pairs), ``fraction_xor`` / ``fraction_add``, the pairs
            decrypted as ``reconstructions``; ``recovered`` is a :class:`RecoveredSubstitution`
            and ``decrypt`` undoes any image of the key.
        """
        plain, encrypted = torch.as_tensor(plain).cpu(), torch.as_tensor(encrypted).cpu()
        if plain.dim() == 3:
            plain, encrypted = plain[None], encrypted[None]
        if plain.shape != encrypted.shape or plain.dim() != 4 or plain.dtype != torch.uint8 \
                or encrypted.dtype != torch.uint8:
            raise AttackError("plain and encrypted must be uint8 tensors of the same shape (n,C,H,W)")
        n = plain.shape[0]
        cost = Cost(pairs=n)
        with measure(cost):
            p, c = plain.reshape(n, -1), encrypted.reshape(n, -1)
            xor, add = p ^ c, c - p  # uint8 subtraction wraps: the shift mod 256
            is_xor = (xor == xor[:1]).all(0) & (n >= 2)
            is_add = (add == add[:1]).all(0) & ~is_xor & (n >= 2)
            rec = RecoveredSubstitution(tuple(plain.shape[1:]), xor[0], add[0], is_xor, is_add)
            recon = rec.decrypt(encrypted)
        result = KeyRecoveryResult(self.name, reconstructions=recon, cost=cost, recovered=rec)  # type: ignore[arg-type]
        result.metrics.update(pairs=float(n), fraction_xor=float(is_xor.double().mean()),
                              fraction_add=float(is_add.double().mean()),
                              fraction_explained=float((is_xor | is_add).double().mean()))
        return result
