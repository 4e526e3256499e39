"""Reading and writing image files losslessly, atomically and without surprises."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .atomic import write_atomic
from .errors import KeyveilError

__all__ = ["IMAGE_SUFFIXES", "ImageFileError", "read_image", "write_png_atomic", "list_images"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}


class ImageFileError(KeyveilError):
    """An image file cannot be used: unreadable, corrupt or of an unsupported kind."""


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively, sorted, hidden files skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath) / name)
    return out


def read_image(path: Path, mode: str = "auto") -> torch.Tensor:
    """Load an 8-bit image as a uint8 ``(C,H,W)`` tensor.

    Args:
        path: the image file.
        mode: ``"auto"`` keeps grayscale (1 channel) and RGB (3 channels) as
            they are and converts palette images to RGB; ``"L"`` or ``"RGB"``
            converts every image to that mode.

    Raises:
        ImageFileError: unreadable or corrupt file, or a channel layout that is
            not 1 or 3 channels of 8 bits in ``auto`` mode (e.g. RGBA, 16-bit).
    """
    try:
        with Image.open(path) as img:
            img.load()
            if mode in ("L", "RGB"):
                img = img.convert(mode)
            elif img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode not in ("L", "RGB"):
                bands = len(img.getbands())
                raise ImageFileError(
                    f"has mode {img.mode} ({bands} channel{'s' if bands != 1 else ''}); schemes take "
                    "8-bit grayscale or RGB: convert it first or pass --mode RGB / --mode L"
                )
            arr = np.array(img, dtype=np.uint8)
    except ImageFileError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageFileError(f"cannot be read as an image ({exc.__class__.__name__}: {exc})") from None
    t = torch.from_numpy(arr)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def write_png_atomic(image: torch.Tensor, path: Path, *, pnginfo: PngInfo | None = None) -> None:
    """Write a uint8 ``(C,H,W)`` tensor as a lossless PNG: temp file, then rename.

    A crash leaves either the old file, or the complete new one, never half a file.
    ``pnginfo`` adds text chunks (keyveil's ciphertext header).
    """
    arr = image.detach().cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
    write_atomic(path, lambda fh: Image.fromarray(arr).save(fh, format="PNG", pnginfo=pnginfo), overwrite=True)
