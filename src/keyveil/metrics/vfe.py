"""Visual Feature Entropy (VFE), VisualMixer's visual-privacy metric (docs/design.md §3.4).

The kernel lives in :mod:`keyveil.schemes.visualmixer.vfe` (definition, our
reading of the paper, clipped edge windows), because the ``visualmixer``
scheme uses it to choose its windows and schemes never import metrics
(docs/design.md §1); this module is its public home.

Examples:
    >>> import torch
    >>> from keyveil.metrics import vfe
    >>> vfe(torch.full((3, 28, 28), 200, dtype=torch.uint8)).tolist()  # a flat image
    [0.0]
"""

from __future__ import annotations

from ..schemes.visualmixer.vfe import gradient_energy, vfe, vfe_map, window_sums

__all__ = ["vfe", "vfe_map", "gradient_energy", "window_sums"]
