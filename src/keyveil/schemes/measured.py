"""What the schemes' defaults were measured to hide: face re-identification and accuracy cost.

Figures printed by ``keyveil experiment frontier`` (RESULTS.md, "Privacy–utility
frontier") and ``keyveil security-report`` (SECURITY.md, "reidentify"; for
``instahide``, "instahide"): AT&T
faces 112×92, gallery photos 1–5 of 40 people, probes 6–10, chance 2.5 %;
accuracy drop of the small-CNN recipe on Fashion-MNIST (10,000 training images,
2 epochs). ``keyveil schemes`` prints them; a figure here changes only when
those commands are re-run, and tests/test_measured.py ties every figure to
the committed :data:`FRONTIER_FILE` and :data:`SECURITY_FILE`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_REIDENTIFICATION", "VISUALMIXER_WEAK_WINDOWS", "VISUALMIXER_TRADEOFF", "FrontierPoint",
           "FRONTIER_PLAIN", "FRONTIER_VISUALMIXER", "REIDENTIFICATION_SOURCE", "FRONTIER_FILE", "SECURITY_FILE"]

FRONTIER_FILE = "results/frontier/frontier.json"
"""Where ``keyveil experiment frontier`` wrote the figures of :data:`FRONTIER_PLAIN` / :data:`FRONTIER_VISUALMIXER`."""

SECURITY_FILE = "SECURITY.md"
"""Where ``keyveil security-report`` wrote the figures :data:`DEFAULT_REIDENTIFICATION` quotes."""


@dataclass(frozen=True)
class FrontierPoint:
    """One row of :data:`FRONTIER_FILE`, in percent (tests/test_measured.py checks each against the file)."""

    label: str
    """The row's ``label`` in the file."""
    glance: float
    """Top-1 face re-identification at a glance (row ``reid.glance``)."""
    adapted: float | None
    """Top-1 by the adapted attacker (row ``reid.adapted``; None where it does not apply)."""
    accuracy: float
    """Fashion-MNIST test accuracy of the small-CNN recipe (row ``accuracy``)."""
    drop_points: float
    """Accuracy drop against plain images, in points (row ``drop_points``, rounded to 2 decimals)."""


FRONTIER_PLAIN = FrontierPoint("no encryption", glance=93.0, adapted=None, accuracy=88.60, drop_points=0.0)
FRONTIER_VISUALMIXER: dict[str, FrontierPoint] = {
    "whole": FrontierPoint("window 1 (whole image)", glance=9.5, adapted=15.0, accuracy=34.92, drop_points=53.68),
    "half": FrontierPoint("window 1/2", glance=13.5, adapted=52.5, accuracy=64.69, drop_points=23.91),
    "eighth": FrontierPoint("window 1/8", glance=87.5, adapted=90.5, accuracy=82.85, drop_points=5.75),
    "seed": FrontierPoint("seed default 2..8 px", glance=93.0, adapted=93.0, accuracy=84.98, drop_points=3.62),
}
"""VisualMixer's frontier points the messages below quote (key: a short name, value: the file's row)."""

_ORACLE = "with an encryption oracle (adapted / key recovery)"

DEFAULT_REIDENTIFICATION: dict[str, str] = {
    "pixel": f"93.0 % {_ORACLE} [9.0 % glance]",
    "pixel-np": f"93.0 % {_ORACLE} [4.5 % glance]",
    "etc": f"93.0 % {_ORACLE} [4.5 % glance]",
    "le": f"93.0 % {_ORACLE} [2.5 % glance]",
    "ele": f"93.0 % {_ORACLE} [3.0 % glance]",
    "vit": f"91.5 % {_ORACLE} [2.5 % glance]",
    "patch": "30.0 % (adapted; glance 8.5 %)",
    "mix": "89.5 % (glance, adapted)",
    "visualmixer": "14.0 % (adapted; glance 9.5 %); costs "
                   f"{FRONTIER_VISUALMIXER['whole'].drop_points:.0f} accuracy points",
    "visualmixer-seed": "93.0 % (glance, adapted) = plain photos",
    "noise": "92.0 % (glance; plain photos 93.0 %)",
    "instahide": "49.5 % (faces recovered by Carlini et al.'s attack from 10 epochs of encodings; encodings 4.0 %)",
}
"""Scheme name -> the default's measured worst-case re-identification (top-1), in words."""

REIDENTIFICATION_SOURCE: dict[str, tuple[str, str]] = {
    **{name: ("reidentify", name) for name in ("pixel", "pixel-np", "etc", "le", "ele", "vit", "patch", "mix",
                                               "visualmixer", "noise")},
    "visualmixer-seed": ("reidentify", "visualmixer-seed"),
    "instahide": ("instahide", "instahide k=4"),
}
"""Scheme name -> (section, row) of :data:`SECURITY_FILE` whose figure holds every percentage quoted above."""

_VM = FRONTIER_VISUALMIXER

VISUALMIXER_WEAK_WINDOWS = (
    f"measured on AT&T faces (keyveil experiment frontier): windows of 1/2 the side were re-identified "
    f"{_VM['half'].glance:.1f} % (glance) and {_VM['half'].adapted:.1f} % (adapted) top-1, 1/8 of the side "
    f"{_VM['eighth'].glance:.1f} % / {_VM['eighth'].adapted:.1f} %, the seed's 2..8 px {_VM['seed'].glance:.1f} % / "
    f"{_VM['seed'].adapted:.1f} %, against 2.5 % chance and {FRONTIER_PLAIN.glance:.1f} % for plain photos."
)
"""The sentence VisualMixer's :class:`~keyveil.schemes.PrivacyWarning` quotes."""

VISUALMIXER_TRADEOFF = (
    f"visualmixer: holding face re-identification at a glance to <= 10 % needed one window over the whole image "
    f"({_VM['whole'].glance:.1f} %), which drops Fashion-MNIST accuracy by {_VM['whole'].drop_points:.2f} points; "
    f"windows of 1/2 the side cost {_VM['half'].drop_points:.2f} points and leave {_VM['half'].glance:.1f} % "
    f"({_VM['half'].adapted:.1f} % for the adapted attacker); the seed's 2..8 px cost {_VM['seed'].drop_points:.2f} "
    f"points and leave faces {_VM['seed'].glance:.1f} % recognizable, as plain photos (keyveil experiment frontier)."
)
"""VisualMixer's measured privacy–accuracy trade-off, printed by ``keyveil schemes``."""
