"""Optimizers for training on scrambled images (DESIGN.md §3.4)."""

from __future__ import annotations

from .stadam import STAdam

__all__ = ["STAdam"]
