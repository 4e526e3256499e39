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
    plain images of the same kind (the attacker's own photos). This is the one place that picks the attack:
    the chains and the security report's scenarios both run it.

    Examples:
        >>> from keyveil import Key, schemes
        >>> BlockChain(schemes.create("le", Key.from_seed(0))).needs_public
        True
    """

    name = "ciphertext-only-blocks"

    def __init__(self, scheme: Scheme, max_values: int = 16384) -> None:
        self.scheme, self.max_values = scheme, int(max_values)
        s, whole = scheme, not self.needs_public
        if whole and s.negapos not in (None, "block"):
            raise AttackError(f"the ciphertext-only jigsaw needs whole blocks (negapos={s.negapos!r} flips single "
                              "values inside them)")
        if not whole and s.rotate:
            raise AttackError("no ciphertext-only attack: this scheme rotates blocks and shuffles inside them (the "
                              "template matching needs blocks that stay upright)")
        if not s.nibbles and s.shuffle == "per_block":
            raise AttackError("no ciphertext-only attack for a per-block shuffle of whole values (ELE's nibbles only)")
        if not whole and not s.nibbles and s.scramble and (s.channel_shuffle or s.negapos not in (None, "shared")):
            raise AttackError("the two-step attack handles a shared in-block shuffle with shared flips and a block "
                              "scramble (the vit preset); this scheme also shuffles channels or flips per block")

    @property
    def needs_public(self) -> bool:
        """Whether the attack matches a block's inside to public plain images (LE, ELE, vit)."""
        return bool(self.scheme.nibbles or self.scheme.shuffle is not None)

    def run(self, *, ciphertexts: torch.Tensor, test_encrypted: torch.Tensor, public: torch.Tensor | None = None,
            test_plain: torch.Tensor | None = None, reference: Scheme | None = None) -> AttackResult:
        """Recover the key from ``ciphertexts``, decrypt ``test_encrypted``; ``test_plain`` and ``reference``
        (the true scheme, read only for scoring) add the figures of the attack that ran."""
        from .jigsaw_shared import SharedKeyJigsaw
        from .nibble_layout import NibbleLayout

        s, m = self.scheme, self.scheme.block_size
        if not self.needs_public:
            return SharedKeyJigsaw(block_size=m, rotations=s.rotate, negapos=s.negapos == "block",
                                   channel_orders=s.channel_shuffle, max_values=self.max_values).run(
                ciphertexts=ciphertexts, test_encrypted=test_encrypted, test_plain=test_plain, reference=reference)
        if public is None:
            raise AttackError("matching a block's inside needs public plain images of the same kind")
        if not s.scramble or s.nibbles:  # LE keeps blocks in place; ELE's are placed by the matching
            return NibbleLayout(block_size=m, nibbles=bool(s.nibbles), per_block=s.shuffle == "per_block").run(
                ciphertexts=ciphertexts, public=public, test_encrypted=test_encrypted, test_plain=test_plain)
        inside = NibbleLayout(block_size=m, nibbles=False).run(
            ciphertexts=ciphertexts, public=public, test_encrypted=torch.cat([ciphertexts, test_encrypted]))
        whole, n = inside.reconstructions, len(ciphertexts)
        r = SharedKeyJigsaw(block_size=m, max_values=self.max_values).run(
            ciphertexts=whole[:n], test_encrypted=whole[n:], test_plain=test_plain)
        r.cost.cpu_seconds += inside.cost.cpu_seconds
        r.cost.wall_seconds += inside.cost.wall_seconds
        if test_plain is not None:  # two keyed steps: scored on the images
            exact = (r.reconstructions == torch.as_tensor(test_plain)).flatten(1).all(1)
            r.metrics["decrypted_exactly"] = float(exact.double().mean())
        return r


def _block(scheme: Scheme, seconds: float) -> Attack | str:
    try:
        return BlockChain(scheme)
    except AttackError as e:
        return str(e)


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
