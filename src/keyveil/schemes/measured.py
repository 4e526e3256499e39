"""What the schemes' defaults were measured to hide: face re-identification and accuracy cost.

Figures printed by ``keyveil experiment frontier`` (RESULTS.md, "Privacy–utility
frontier") and ``keyveil security-report`` (SECURITY.md, "reidentify"): AT&T
faces 112×92, gallery photos 1–5 of 40 people, probes 6–10, chance 2.5 %;
accuracy drop of the small-CNN recipe on Fashion-MNIST. ``keyveil schemes``
prints them; a figure here changes only when those commands are re-run.
"""

from __future__ import annotations

__all__ = ["DEFAULT_REIDENTIFICATION", "VISUALMIXER_WEAK_WINDOWS"]

DEFAULT_REIDENTIFICATION: dict[str, str] = {}
"""Scheme name -> the default's measured worst-case re-identification (top-1), in words."""

VISUALMIXER_WEAK_WINDOWS = "measured by keyveil experiment frontier (see RESULTS.md)."
"""The sentence VisualMixer's :class:`~keyveil.schemes.PrivacyWarning` quotes."""
