"""The attack contract: a registry, one entry point, structured results (docs/design.md §5).

Every attack is a class with keyword-only hyperparameters and a single
``run(**inputs)`` method that returns an :class:`AttackResult` (or a
:class:`KeyRecoveryResult` when it recovers key material). Cost is always
measured: CPU seconds, wall seconds, and the queries or pairs used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import KeyveilError
from ..registry import Registry, adopt_subclass
from ..schemes.functional import invert_permutation, join_nibbles, split_nibbles

__all__ = [
    "Attack",
    "AttackError",
    "UnknownAttackError",
    "ATTACKS",
    "AttackResult",
    "Cost",
    "KeyRecoveryResult",
    "RecoveredPermutation",
    "create_attack",
    "list_attacks",
    "register_attack",
]


class AttackError(KeyveilError):
    """An attack was given inputs it cannot use (the message says what to pass)."""


class UnknownAttackError(AttackError, KeyError):
    """No attack is registered under that name (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class Cost:
    """What an attack spent: CPU and wall time, oracle queries, (plain, encrypted) pairs, ciphertexts."""

    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    queries: int = 0
    pairs: int = 0
    ciphertexts: int = 0

    def describe(self) -> str:
        used = [f"{v} {k}" for k, v in (("queries", self.queries), ("pairs", self.pairs),
                                         ("ciphertexts", self.ciphertexts)) if v]
        return ", ".join(used + [f"{self.cpu_seconds:.2f} s CPU"])


@contextmanager
def measure(cost: Cost) -> Iterator[Cost]:
    """Add the CPU (process) and wall time of the ``with`` body to ``cost``."""
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        yield cost
    finally:
        cost.cpu_seconds += time.process_time() - c0
        cost.wall_seconds += time.perf_counter() - w0


@dataclass
class AttackResult:
    """What an attack produced.

    Attributes:
        attack: the attack's registered name.
        reconstructions: recovered images ``(B,C,H,W)`` (same dtype as the
            attacked images) or ``None`` when the attack recovers no images.
        metrics: named figures (fractions, SSIM, PSNR, AUC...). Figures that
            need the ground truth are present only when it was given.
        cost: the measured cost.
        details: anything else worth keeping (per-n curves, hyperparameters).
    """

    attack: str
    reconstructions: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        return f"{self.attack}: {figs} ({self.cost.describe()})"


def _fmt(v: Any) -> str:
    """Counts as integers (784, not 784.0000), fractions with four decimals."""
    if isinstance(v, float) and v.is_integer() and abs(v) >= 2:
        return str(int(v))
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class RecoveredPermutation:
    """A recovered fixed-key rearrangement of an image's values, plus flips.

    Encryption of a flattened ``(C,H,W)`` image ``v`` is modelled as
    ``y = flip(v[index], mask)``. With ``spatial`` the permutation acts on the
    ``H*W`` positions and is the same for every channel (``pixel``); otherwise
    on all ``C*H*W`` values (``block``, ``pixel`` with ``per_channel``); with
    ``nibbles`` on the ``2*C*H*W`` 4-bit halves (LE/ELE), flips being
    ``u -> 15 - u``.

    Attributes:
        shape: the ``(C,H,W)`` geometry it was recovered for.
        index: int64 permutation of the units (positions, values or nibbles).
        mask: bool, one per unit, or ``None`` (no negative–positive flips).
        spatial: see above.
        nibbles: see above.
    """

    shape: tuple[int, int, int]
    index: torch.Tensor
    mask: torch.Tensor | None = None
    spatial: bool = False
    nibbles: bool = False

    def value_level(self) -> RecoveredPermutation:
        """The same rearrangement written on all ``C*H*W`` values (for comparisons)."""
        if not self.spatial:
            return self
        c, h, w = self.shape
        offsets = torch.arange(c)[:, None] * (h * w)
        index = (self.index[None, :].cpu() + offsets).reshape(-1)
        mask = None if self.mask is None else self.mask.cpu().repeat(c)
        return RecoveredPermutation(self.shape, index, mask, spatial=False)

    def _batch(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(y)
        batch = y if y.dim() == 4 else y[None]
        if tuple(batch.shape[1:]) != tuple(self.shape):
            raise AttackError(f"this key was recovered for images of shape {self.shape}, got {tuple(batch.shape[1:])}")
        return batch

    def _units(self, batch: torch.Tensor) -> tuple[torch.Tensor, int | float]:
        b, c, h, w = batch.shape
        if self.nibbles:
            q = batch if batch.dtype == torch.uint8 else torch.round(batch * 255).to(torch.uint8)
            return split_nibbles(q.reshape(b, -1)), 15
        if self.spatial:
            return batch.reshape(b * c, h * w), (255 if batch.dtype == torch.uint8 else 1.0)
        return batch.reshape(b, c * h * w), (255 if batch.dtype == torch.uint8 else 1.0)

    def _back(self, units: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.nibbles:
            out = join_nibbles(units).view(like.shape)
            return out if like.dtype == torch.uint8 else out.to(like.dtype) / 255
        return units.reshape(like.shape)

    def _flip(self, units: torch.Tensor, white: int | float) -> torch.Tensor:
        if self.mask is None:
            return units
        return torch.where(self.mask.to(units.device), white - units, units)

    def encrypt(self, x: torch.Tensor) -> torch.Tensor:
        """Encrypt as the recovered key would: ``(C,H,W)`` or ``(B,C,H,W)`` tensors."""
        batch = self._batch(x)
        units, white = self._units(batch)
        out = self._flip(units.index_select(1, self.index.to(batch.device)), white)
        out = self._back(out, batch)
        return out if torch.as_tensor(x).dim() == 4 else out[0]

    def decrypt(self, y: torch.Tensor) -> torch.Tensor:
        """Un-scramble images encrypted under the recovered key.

        Examples:
            >>> import torch
            >>> p = RecoveredPermutation((1, 2, 2), torch.tensor([2, 0, 3, 1]))
            >>> x = torch.arange(4.).view(1, 1, 2, 2)
            >>> p.encrypt(x).flatten().tolist()
            [2.0, 0.0, 3.0, 1.0]
            >>> bool(torch.equal(p.decrypt(p.encrypt(x)), x))
            True
        """
        batch = self._batch(y)
        units, white = self._units(batch)
        units = self._flip(units, white)
        out = self._back(units.index_select(1, invert_permutation(self.index).to(batch.device)), batch)
        return out if torch.as_tensor(y).dim() == 4 else out[0]


@dataclass
class KeyRecoveryResult(AttackResult):
    """An :class:`AttackResult` that also holds recovered key material.

    :meth:`decrypt` un-scrambles any image encrypted under the recovered key.
    """

    recovered: RecoveredPermutation | None = None

    def decrypt(self, y: torch.Tensor) -> torch.Tensor:
        """Un-scramble ``y`` (``(C,H,W)`` or ``(B,C,H,W)``) with the recovered key."""
        if self.recovered is None:
            raise AttackError("this attack recovered no key material")
        return self.recovered.decrypt(y)


class Attack:
    """Base class: keyword-only hyperparameters in ``__init__``, one :meth:`run`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def run(self, **inputs: Any) -> AttackResult:
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """The attack's settings, for reports."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


ATTACKS: Registry[type[Attack]] = Registry("attack", group="keyveil.attacks", error=UnknownAttackError,
                                           adopt=adopt_subclass(Attack, "keyveil.attacks"))
"""The attack registry (entry-point group ``keyveil.attacks``); see :mod:`keyveil.registry`."""


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register ``cls`` under ``cls.name`` (duplicates raise)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name to register under")
    return ATTACKS.add(cls.name, cls)


def create_attack(name: str, **hyperparameters: Any) -> Attack:
    """Build the attack registered as ``name``.

    Examples:
        >>> create_attack("chosen-plaintext").name
        'chosen-plaintext'
    """
    return ATTACKS.get(name)(**hyperparameters)


def list_attacks(filter: str | Iterable[str] | None = None) -> list[str]:
    """The registered attack names, sorted; with ``filter``, those matching a shell-style pattern.

    Examples:
        >>> list_attacks("*-plaintext")
        ['chosen-plaintext', 'known-plaintext']
    """
    return ATTACKS.names(filter)


Oracle = Callable[[torch.Tensor], torch.Tensor]
