"""Chains: a ciphertext-only attack first, then whatever the recovered images allow.

:func:`ciphertext_only_attack` picks the attack that fits a scheme from
:data:`CIPHERTEXT_ONLY` (one line per scheme family; a new attack plugs in
with ``CIPHERTEXT_ONLY["block"] = lambda scheme: MyJigsaw(...)``), or says why
there is none. :func:`recover_from_ciphertexts` runs it on the ciphertexts an
attacker holds and returns its reconstructions of the targets, turned the way
that best matches the attacker's plain reference photos (a layout comes back
up to the grid's symmetries, and flips up to one global negation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schemes import Scheme
from .base import Attack, AttackError, AttackResult
from .ciphertext_only import CiphertextOnly, grid_symmetries

__all__ = ["CIPHERTEXT_ONLY", "BlockChain", "ciphertext_only_attack", "recover_from_ciphertexts", "orient_like"]


def _pixel(scheme: Scheme, seconds: float) -> Attack | str:
    if getattr(scheme, "per_channel", False):
        return "per-channel pixel permutations: no ciphertext-only attack implemented (channels recovered apart)"
    return CiphertextOnly(flips=bool(scheme.negapos), anneal_seconds=seconds)


class BlockChain(Attack):
    """Fixed-key block schemes from ciphertexts alone: the attack that fits each preset.

    ``etc``/``block``: :class:`~.jigsaw_shared.SharedKeyJigsaw`; ``vit``: its shared in-block shuffle by
    template matching (:class:`~.nibble_layout.NibbleLayout` on values), then the jigsaw on the whole blocks;
    ``le``/``ele``: :class:`~.nibble_layout.NibbleLayout` on nibbles. The templates come from ``public``
    plain images of the same kind (the attacker's own photos).
    """

    def __init__(self, scheme: Scheme, max_values: int = 16384) -> None:
        self.scheme, self.max_values = scheme, int(max_values)

    def run(self, *, ciphertexts: torch.Tensor, test_encrypted: torch.Tensor,
            public: torch.Tensor | None = None) -> AttackResult:
        from .jigsaw_shared import SharedKeyJigsaw
        from .nibble_layout import NibbleLayout

        s, m = self.scheme, self.scheme.block_size
        if s.nibbles or s.shuffle == "shared":
            if public is None:
                raise AttackError("matching a block's inside needs public plain images of the same kind")
            inside = NibbleLayout(block_size=m, nibbles=bool(s.nibbles), per_block=s.shuffle == "per_block").run(
                ciphertexts=ciphertexts, public=public, test_encrypted=torch.cat([ciphertexts, test_encrypted]))
            if not s.scramble or s.nibbles:  # LE keeps blocks in place; ELE's are placed by the matching
                return AttackResult("ciphertext-only", reconstructions=inside.reconstructions[len(ciphertexts):],
                                    cost=inside.cost)
            whole = inside.reconstructions
            ciphertexts, test_encrypted = whole[: len(ciphertexts)], whole[len(ciphertexts):]
            jig = SharedKeyJigsaw(block_size=m, max_values=self.max_values)
        else:
            jig = SharedKeyJigsaw(block_size=m, rotations=s.rotate, negapos=s.negapos == "block",
                                  channel_orders=s.channel_shuffle, max_values=self.max_values)
        return jig.run(ciphertexts=ciphertexts, test_encrypted=test_encrypted)


def _block(scheme: Scheme, seconds: float) -> Attack | str:
    if scheme.negapos not in (None, "block", "shared", "independent"):
        return f"no ciphertext-only attack for this block preset (negapos={scheme.negapos!r})"
    if scheme.rotate and (scheme.nibbles or scheme.shuffle is not None):
        return "rotated blocks with an in-block shuffle: no ciphertext-only attack implemented"
    return BlockChain(scheme)


CIPHERTEXT_ONLY: dict[str, Callable[[Scheme, float], Attack | str]] = {
    "pixel": _pixel,
    "block": _block,
}
"""Scheme name -> a factory ``(scheme, seconds)`` of the ciphertext-only attack that fits it, or the
reason there is none (``seconds``: CPU budget of any time-bounded search in it).

Each attack's ``run`` takes ``ciphertexts=`` (``(N,C,H,W)``, one key) and
``test_encrypted=`` (the images to recover) and returns reconstructions of them.
"""


def ciphertext_only_attack(scheme: Scheme | None, seconds: float = 20.0) -> Attack | str:
    """The ciphertext-only attack that fits ``scheme``, or a one-line reason why none applies.

    Examples:
        >>> from keyveil import Key, schemes
        >>> type(ciphertext_only_attack(schemes.create("pixel", Key.generate()))).__name__
        'CiphertextOnly'
        >>> ciphertext_only_attack(schemes.create("mix"))[:7]
        'keyless'
    """
    if scheme is None:
        return "no encryption: nothing to recover"
    name = type(scheme).name
    if scheme.key is None or scheme.per_image:
        return "keyless, fresh randomness per image: the ciphertexts share no key to learn"
    make = CIPHERTEXT_ONLY.get(name)
    if make is None:
        return f"no ciphertext-only attack for {name!r} implemented yet"
    return make(scheme, float(seconds))


def orient_like(recon: torch.Tensor, reference: torch.Tensor, *, negations: bool = False) -> torch.Tensor:
    """``recon`` turned by the grid symmetry (and negation) whose mean image best matches ``reference``'s.

    The attacker's own plain photos fix what ciphertext statistics cannot: left
    from right, up from down, and (``negations``) black from white.
    """
    b, c, h, w = recon.shape
    white = 255.0 if recon.dtype == torch.uint8 else 1.0
    target = reference.float().mean(0).flatten()
    target = target - target.mean()
    flat = recon.reshape(b, c, h * w)
    best, best_score = recon, -float("inf")
    for sym in grid_symmetries(h, w):
        turned = flat[..., sym].reshape(b, c, h, w)
        for neg in (False, True) if negations else (False,):
            cand = (white - turned.float()).to(recon.dtype) if neg else turned
            m = cand.float().mean(0).flatten()
            score = float(torch.nn.functional.cosine_similarity(m - m.mean(), target, dim=0))
            if score > best_score:
                best, best_score = cand, score
    return best


def recover_from_ciphertexts(scheme: Scheme | None, ciphertexts: torch.Tensor, targets: torch.Tensor,
                             reference: torch.Tensor, *, seconds: float = 20.0) -> tuple[torch.Tensor, AttackResult] | str:
    """Run the fitting ciphertext-only attack on ``ciphertexts``; reconstructions of ``targets`` (oriented).

    Args:
        scheme: the victim's scheme (only to choose the attack: its name and public parameters).
        ciphertexts: every ciphertext the attacker holds, one key (``targets`` among them or not).
        targets: the ciphertexts to recover.
        reference: the attacker's plain photos of the same kind (to orient the result).
        seconds: CPU budget of the attack's time-bounded search.

    Returns:
        ``(reconstructions, result)``, or the reason no attack applies.
    """
    attack = ciphertext_only_attack(scheme, seconds)
    if isinstance(attack, str):
        return attack
    if isinstance(attack, BlockChain):
        result = attack.run(ciphertexts=ciphertexts, test_encrypted=targets, public=reference)
    else:
        result = attack.run(ciphertexts=ciphertexts, test_encrypted=targets)
    negations = bool(getattr(attack, "flips", False))
    return orient_like(result.reconstructions, reference, negations=negations), result
