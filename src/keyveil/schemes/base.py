"""The :class:`Scheme` contract every scrambling scheme follows (docs/design.md §3)."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..keys import Key
from .convert import to_batch
from .errors import GeometryError, NotInvertibleError, SchemeError

__all__ = ["Scheme", "Nonce", "max_value", "per_image_uniform", "log2_factorial"]

Nonce = int | Sequence[int] | torch.Tensor


def max_value(x: torch.Tensor) -> float | int:
    """The white level of an image tensor: 255 for uint8, 1.0 for floats."""
    return 255 if x.dtype == torch.uint8 else 1.0


def log2_factorial(n: int) -> float:
    """log2(n!), the key space of a uniformly random permutation of n items."""
    return math.lgamma(n + 1) / math.log(2)


_process_generator: tuple[int, torch.Generator] | None = None


def _fresh_generator() -> torch.Generator:
    """A generator seeded from ``secrets``, re-seeded after a fork (DataLoader workers)."""
    global _process_generator
    pid = os.getpid()
    if _process_generator is None or _process_generator[0] != pid:
        gen = torch.Generator()
        gen.manual_seed(secrets.randbits(63))
        _process_generator = (pid, gen)
    return _process_generator[1]


def per_image_uniform(
    batch: int,
    n: int,
    *,
    label: str,
    key: Key | None,
    generator: torch.Generator | None,
    nonce: Nonce | None,
    device: torch.device,
) -> torch.Tensor:
    """``(batch, n)`` uniforms in [0, 1): per-image randomness for per-image schemes.

    With ``nonce`` (one int per image, or one int for a single image) and a key,
    row ``i`` comes from the key stream ``f"{label}/nonce/{nonce[i]}"``: the
    same key and nonce always give the same row, whatever the batch. Otherwise
    rows come from ``generator`` or, if none is given, from a private
    generator seeded from :mod:`secrets`.
    """
    if nonce is not None:
        if key is None:
            raise SchemeError("a nonce needs a key: create the scheme with key=... to use nonces")
        nonces = torch.as_tensor(nonce).reshape(-1).tolist()
        if len(nonces) != batch:
            raise SchemeError(f"got {len(nonces)} nonces for a batch of {batch} images; pass one per image")
        if batch == 0:
            return torch.empty(0, n, dtype=torch.float32, device=device)
        rows = [key.uniform(f"{label}/nonce/{int(v)}", n) for v in nonces]
        return torch.stack(rows).to(device=device, dtype=torch.float32)
    gen = generator if generator is not None else _fresh_generator()
    out = torch.rand(batch, n, generator=gen, device=gen.device)
    return out.to(device)


class Scheme(nn.Module):
    """Base class: a keyed (or per-image random) image scrambler.

    Subclasses set the class attributes and implement :meth:`_encrypt` (and
    :meth:`_decrypt` when invertible) on ``(B,C,H,W)`` tensors. The public
    :meth:`encrypt`/:meth:`decrypt` accept tensors ``(C,H,W)``/``(B,C,H,W)``
    (uint8 or floating, any device), numpy ``HWC`` arrays and PIL images, and
    return the same kind, dtype, device and shape. A scheme is also an
    ``nn.Module`` transform: ``scheme(x)`` encrypts.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    invertible: ClassVar[bool] = True
    per_image: ClassVar[bool] = False
    needs_key: ClassVar[bool] = True

    def __init__(self, key: Key | None = None) -> None:
        super().__init__()
        if key is not None and not isinstance(key, Key):
            raise TypeError(f"key must be a keyveil.Key, got {type(key).__name__}")
        if self.needs_key and key is None:
            raise SchemeError(
                f"scheme {self.name!r} needs a key: pass key=Key.generate() "
                "(or Key.load(path)) to keyveil.schemes.create"
            )
        self.key = key
        self._cache: dict[Any, Any] = {}

    # -- description --------------------------------------------------------
    def params_dict(self) -> dict[str, Any]:
        """The scheme's options (no secret), for configs and checkpoints."""
        return {}

    @property
    def config(self) -> dict[str, Any]:
        """Name, options and key fingerprint: safe to store and print."""
        return {
            "scheme": getattr(self, "registered_name", self.name),
            "params": self.params_dict(),
            "key_fingerprint": None if self.key is None else self.key.fingerprint,
        }

    def extra_repr(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.params_dict().items()]
        if self.key is not None:
            parts.append(f"key={self.key.fingerprint}")
        return ", ".join(parts)

    def key_space_bits(self, shape: Sequence[int]) -> float:
        """log2 of the number of keys an exhaustive search must try for ``shape``.

        ``shape`` is ``(C,H,W)`` or ``(H,W)`` (then C=3).
        """
        raise NotImplementedError

    # -- application --------------------------------------------------------
    def encrypt(
        self, x: Any, *, generator: torch.Generator | None = None, nonce: Nonce | None = None
    ) -> Any:
        """Scramble ``x`` (tensor, numpy HWC array or PIL image); same kind back."""
        batch, back = to_batch(x)
        self._check_dtype(batch)
        self.check_geometry(tuple(batch.shape[1:]))
        if self.per_image:
            out = self._encrypt(batch, generator=generator, nonce=nonce)
        else:
            if generator is not None or nonce is not None:
                raise SchemeError(f"scheme {self.name!r} is keyed, not per-image: it takes no generator or nonce")
            out = self._encrypt(batch)
        return back(out)

    def decrypt(self, y: Any, *, nonce: Nonce | None = None) -> Any:
        """Undo :meth:`encrypt`; raises :class:`NotInvertibleError` if impossible."""
        if not self.invertible:
            raise NotInvertibleError(self.not_invertible_reason())
        batch, back = to_batch(y)
        self._check_dtype(batch)
        self.check_geometry(tuple(batch.shape[1:]))
        out = self._decrypt(batch, nonce=nonce) if self.per_image else self._decrypt(batch)
        return back(out)

    def forward(self, x: Any) -> Any:
        return self.encrypt(x)

    @property
    def mixes_batch(self) -> bool:
        """Whether an image's ciphertext mixes in other images of its batch (``instahide``).

        Such a scheme cannot run one file at a time: alone in its batch, an image
        would be mixed only with itself.
        """
        return False

    def prepare(self, dtype: torch.dtype = torch.uint8) -> None:
        """Load now what the first :meth:`encrypt` of ``dtype`` images would load lazily.

        Call it before ``DataLoader`` workers are forked, so that they inherit it
        (e.g. VisualMixer's compiled CPU kernels) instead of each loading it again.
        Nothing to do for most schemes.
        """

    def not_invertible_reason(self) -> str:
        return f"scheme {self.name!r} is not invertible"

    def check_geometry(self, chw: tuple[int, ...]) -> None:
        """Raise :class:`GeometryError` if a ``(C,H,W)`` image cannot be scrambled."""
        if len(chw) != 3 or min(chw) < 1:
            raise GeometryError(f"expected an image of shape (C,H,W) with C,H,W >= 1, got {chw}")

    def _check_dtype(self, x: torch.Tensor) -> None:
        if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
            raise SchemeError(
                f"images must be uint8 (0..255) or floating (0..1), got {x.dtype}; "
                "convert with x.to(torch.uint8) or x.float() / 255"
            )

    def _cached(self, cache_key: Any, make: Callable[[], Any]) -> Any:
        """Derive parameters once per geometry (and device) and keep them."""
        try:
            return self._cache[cache_key]
        except KeyError:
            value = self._cache[cache_key] = make()
            return value

    def _encrypt(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        raise NotImplementedError

    def _decrypt(self, y: torch.Tensor, **kw: Any) -> torch.Tensor:
        raise NotInvertibleError(self.not_invertible_reason())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}  # derived parameters are re-derived in the worker
        return state
