"""Privacy and quality metrics: PSNR, SSIM, VFE, key-space size (DESIGN.md §5)."""

from __future__ import annotations

from .keyspace import key_space_bits
from .quality import psnr, ssim

__all__ = ["psnr", "ssim", "key_space_bits"]
