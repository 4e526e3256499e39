"""Key-space size of a scheme: log2 of the keys an exhaustive search must try."""

from __future__ import annotations

from collections.abc import Sequence

from ..keys import SECRET_BYTES, Key
from ..schemes import Scheme, create

__all__ = ["key_space_bits"]


def key_space_bits(scheme: Scheme | str, shape: Sequence[int], *, cap_by_secret: bool = False) -> float:
    """log2 of the number of keys of ``scheme`` for images of ``shape``.

    Delegates to ``scheme.key_space_bits``. A large key space only rules out
    exhaustive search; it says nothing about the structural attacks of
    :mod:`keyveil.attacks` (a pixel permutation of 32×32 images has 8,769 bits
    and falls to 2 chosen images).

    Args:
        scheme: a scheme, or a registered scheme name.
        shape: ``(C,H,W)`` or ``(H,W)`` (then C=3).
        cap_by_secret: cap the figure at the 256 bits of the key secret every
            keyed permutation is derived from.

    Examples:
        >>> round(key_space_bits("pixel", (3, 32, 32)))
        8769
        >>> key_space_bits("pixel", (3, 32, 32), cap_by_secret=True)
        256.0
    """
    if isinstance(scheme, str):
        scheme = create(scheme, Key(bytes(SECRET_BYTES)))  # geometry only: a throw-away key
    bits = float(scheme.key_space_bits(tuple(shape)))
    if cap_by_secret and scheme.needs_key:
        bits = min(bits, 8.0 * SECRET_BYTES)
    return bits
