"""What the schemes' defaults were measured to hide: face re-identification and accuracy cost.

Figures printed by ``keyveil experiment frontier`` (RESULTS.md, "Privacy–utility
frontier") and ``keyveil security-report`` (SECURITY.md, "reidentify"; for
``instahide``, "instahide"): AT&T
faces 112×92, gallery photos 1–5 of 40 people, probes 6–10, chance 2.5 %;
accuracy drop of the small-CNN recipe on Fashion-MNIST (10,000 training images,
2 epochs). ``keyveil schemes`` prints them; a figure here changes only when
those commands are re-run.
"""

from __future__ import annotations

__all__ = ["DEFAULT_REIDENTIFICATION", "VISUALMIXER_WEAK_WINDOWS", "VISUALMIXER_TRADEOFF"]

_ORACLE = "with an encryption oracle (adapted / key recovery)"

DEFAULT_REIDENTIFICATION: dict[str, str] = {
    "pixel": f"93.0 % {_ORACLE} [9.0 % glance]",
    "pixel-np": f"93.0 % {_ORACLE} [4.5 % glance]",
    "etc": f"93.0 % {_ORACLE} [4.5 % glance]",
    "le": f"93.0 % {_ORACLE} [2.5 % glance]",
    "ele": f"93.0 % {_ORACLE} [3.0 % glance]",
    "vit": f"91.5 % {_ORACLE} [2.5 % glance]",
    "patch": "29.5 % (adapted; glance 8.5 %)",
    "mix": "89.5 % (glance, adapted)",
    "visualmixer": "16.0 % (inverted; glance 9.5 %); costs 54 accuracy points",
    "visualmixer-seed": "93.0 % (glance, adapted) = plain photos",
    "noise": "92.0 % (glance; plain photos 93.0 %)",
    "instahide": "49.5 % (faces recovered by Carlini et al.'s attack from 10 epochs of encodings; encodings 3.3 %)",
}
"""Scheme name -> the default's measured worst-case re-identification (top-1), in words."""

VISUALMIXER_WEAK_WINDOWS = (
    "measured on AT&T faces (keyveil experiment frontier): windows of 1/2 the side were re-identified 13.5 % "
    "(glance) and 52.5 % (adapted) top-1, 1/8 of the side 87.5 % / 90.5 %, the seed's 2..8 px 93.0 % / 93.0 %, "
    "against 2.5 % chance and 93.0 % for plain photos."
)
"""The sentence VisualMixer's :class:`~keyveil.schemes.PrivacyWarning` quotes."""

VISUALMIXER_TRADEOFF = (
    "visualmixer: holding face re-identification at a glance to <= 10 % needed one window over the whole image "
    "(9.5 %), which drops Fashion-MNIST accuracy by 53.68 points; windows of 1/2 the side cost 23.91 points and "
    "leave 13.5 % (52.5 % for the adapted attacker); the seed's 2..8 px cost 3.62 points and leave faces 93.0 % "
    "recognizable, as plain photos (keyveil experiment frontier)."
)
"""VisualMixer's measured privacy–accuracy trade-off, printed by ``keyveil schemes``."""
