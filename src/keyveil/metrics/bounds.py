"""VisualMixer's window-size bounds (docs/design.md §3.4, paper Sec. IV-B and IV-C).

The implementation lives in :mod:`keyveil.schemes.visualmixer.bounds` (the
``visualmixer`` scheme derives ``ws_max`` from :func:`ws_upper`, and schemes
never import metrics, docs/design.md §1); this module is its public home.

Examples:
    >>> from keyveil.metrics import expected_vfe, ws_lower
    >>> round(expected_vfe(4, 0.05), 4)
    0.15
    >>> ws_lower(0.15, 0.05, confidence=0.5)
    4
"""

from __future__ import annotations

from ..schemes.visualmixer.bounds import expected_vfe, shuffle_bias, vfe_std, ws_lower, ws_upper

__all__ = ["expected_vfe", "vfe_std", "ws_lower", "shuffle_bias", "ws_upper"]
