"""Turning PIL images, numpy arrays and tensors into ``(B,C,H,W)`` tensors and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["to_batch"]


def to_batch(x: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Return ``x`` as a ``(B,C,H,W)`` tensor and a function that restores its kind.

    Accepts a tensor ``(C,H,W)``/``(B,C,H,W)``, a numpy array ``(H,W)`` or
    ``(H,W,C)`` (as images are stored), or a PIL image. The tensor returned may
    share memory with ``x``; schemes never write into it.
    """
    if isinstance(x, torch.Tensor):
        if x.dim() == 4:
            return x, lambda y: y
        if x.dim() == 3:
            return x.unsqueeze(0), lambda y: y.squeeze(0)
        raise ValueError(
            f"expected a tensor of shape (C,H,W) or (B,C,H,W), got shape {tuple(x.shape)}"
        )
    if isinstance(x, np.ndarray):
        if not x.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
            x = x.copy()
        if x.ndim == 2:
            t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
            return t, lambda y: y[0, 0].cpu().numpy()
        if x.ndim == 3:
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
            return t, lambda y: y[0].permute(1, 2, 0).cpu().numpy()
        raise ValueError(f"expected a numpy image (H,W) or (H,W,C), got shape {x.shape}")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(x, Image.Image):
        mode = x.mode
        if mode not in ("L", "RGB", "RGBA"):
            x = x.convert("RGB")
            mode = "RGB"
        arr = np.asarray(x)
        t, back = to_batch(arr)
        return t, lambda y: Image.fromarray(back(y), mode=mode)
    raise TypeError(
        f"expected a torch.Tensor, numpy array or PIL image, got {type(x).__name__}"
    )
