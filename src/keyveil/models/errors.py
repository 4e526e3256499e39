"""The error hierarchy of key-aware models (all under ``ValueError``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import KeyveilError

__all__ = ["KeyedModelError", "UnsupportedModelError", "SelfCheckError", "UnsupportedOp"]


class KeyedModelError(KeyveilError):
    """Base class of every error raised while making or loading a keyed model."""


@dataclass(frozen=True)
class UnsupportedOp:
    """One operation a keyed model cannot carry, found by the validator.

    Attributes:
        node: the name of the graph node (usually the module path, e.g. ``"layer1.0.conv1"``).
        op: what it is (``"Upsample"``, ``"torch.nn.functional.interpolate"``, ...).
        reason: why it cannot run on scrambled feature maps and what to do instead.
    """

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.reason}"


class UnsupportedModelError(KeyedModelError):
    """The model uses operations that do not commute with a spatial permutation.

    ``problems`` lists every one of them, so a single error tells the whole story.
    """

    def __init__(self, message: str, problems: Sequence[UnsupportedOp] = ()) -> None:
        self.problems = list(problems)
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{message}\n{lines}"
        super().__init__(message)


class SelfCheckError(KeyedModelError):
    """The converted model's logits on encrypted input differ from the plain model's."""
