"""Privacy and quality metrics: PSNR, SSIM, VFE, key-space size (docs/design.md §5)."""

from __future__ import annotations

from .bounds import expected_vfe, shuffle_bias, vfe_std, ws_lower, ws_upper
from .keyspace import key_space_bits
from .quality import psnr, ssim
from .vfe import vfe, vfe_map

__all__ = [
    "psnr",
    "ssim",
    "key_space_bits",
    "vfe",
    "vfe_map",
    "expected_vfe",
    "vfe_std",
    "ws_lower",
    "ws_upper",
    "shuffle_bias",
]
