"""Optimizers for training on scrambled images (docs/design.md §3.4)."""

from __future__ import annotations

from .stadam import STAdam

__all__ = ["STAdam"]
