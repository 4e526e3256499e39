"""Reading and writing image files losslessly, atomically and without surprises."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
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
    """Load an image as a uint8 ``(C,H,W)`` tensor, upright, or refuse it with the reason.

    Every conversion is exact or refused, never a silent loss:

    - EXIF orientation is applied, so the tensor is upright as a viewer shows it;
    - 1-bit images become 0/255 grayscale; palette images without transparency become RGB;
    - 16-bit images (grayscale or RGB), images with an alpha channel, CMYK and other
      colour spaces, floating-point images and multi-frame files are refused in ``auto``
      mode; with ``mode="L"``/``"RGB"`` 16-bit values are scaled to 0..255 (rounded),
      alpha is composited over white, YCbCr is converted; CMYK, Lab, HSV and float
      images are always refused (convert them with a colour-managed tool first).

    Args:
        path: the image file.
        mode: ``"auto"`` keeps 8-bit grayscale (1 channel) and RGB (3 channels) as they
            are; ``"L"`` or ``"RGB"`` converts every image to that mode.

    Raises:
        ImageFileError: unreadable or corrupt file, or a kind of image that cannot be
            used as it is (the message says what to do).
    """
    if mode not in ("auto", "L", "RGB"):
        raise ImageFileError(f"mode must be 'auto', 'L' or 'RGB', got {mode!r}")
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ImageFileError(
                    f"has {frames} frames (an animation or a multi-page file); keyveil encrypts single "
                    "images: extract the frame you want first"
                )
            sixteen = any(";16" in str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in img.tile)
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_uint8(img, mode, sixteen)
    except ImageFileError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFileError(f"cannot be read as an image ({exc.__class__.__name__}: {exc})") from None
    t = torch.from_numpy(arr)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


_REFUSED_ALWAYS = {
    "CMYK": "is a CMYK image; convert it to RGB with a colour-managed tool first (keyveil does not guess "
            "the ink profile)",
    "LAB": "is a Lab image; convert it to RGB with a colour-managed tool first",
    "HSV": "is an HSV image; convert it to RGB first",
    "F": "is a floating-point image; convert it to 8 bits (0..255) first",
}


def _to_uint8(img: Image.Image, mode: str, sixteen: bool) -> np.ndarray:
    """The pixels of ``img`` as a uint8 HW or HWC array in ``mode`` (see :func:`read_image`)."""
    m = img.mode
    if m in _REFUSED_ALWAYS:
        raise ImageFileError(_REFUSED_ALWAYS[m])
    convert_hint = "pass --mode L or --mode RGB to convert it (mode='L'/'RGB' in Python)"
    if m.startswith("I"):  # I;16, I;16B, ... and I (32-bit: 16-bit PNGs in older Pillow)
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageFileError(f"is a {m} image with values outside 0..65535; convert it to 8 bits first")
        if mode == "auto":
            raise ImageFileError(f"has 16 bits per value (mode {m}); schemes take 8 bits: {convert_hint} "
                                 "(values scaled to 0..255, the low byte is lost)")
        gray = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        return gray if mode == "L" else np.repeat(gray[..., None], 3, axis=2)
    if sixteen and mode == "auto":
        raise ImageFileError(f"has 16 bits per value ({m}); schemes take 8 bits: {convert_hint} "
                             "(the low byte is dropped)")
    if m == "1":
        img = img.convert("L")
    elif m in ("P", "PA"):
        img = img.convert("RGBA" if m == "PA" or "transparency" in img.info else "RGB")
    elif m == "YCbCr":
        if mode == "auto":
            raise ImageFileError(f"is a YCbCr image; {convert_hint}")
        img = img.convert("RGB")
    elif m == "RGBX":
        img = img.convert("RGB")
    m = img.mode
    if m in ("RGBA", "LA", "La", "RGBa"):
        if mode == "auto":
            raise ImageFileError(f"has an alpha channel (mode {m}); keyveil does not guess what lies behind "
                                 f"transparent pixels: {convert_hint} (composited over white)")
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    elif m not in ("L", "RGB"):
        bands = len(img.getbands())
        raise ImageFileError(f"has mode {m} ({bands} channel{'s' if bands != 1 else ''}); schemes take 8-bit "
                             "grayscale or RGB: convert it first")
    if mode in ("L", "RGB") and img.mode != mode:
        img = img.convert(mode)
    return np.array(img, dtype=np.uint8)


def write_png_atomic(image: torch.Tensor, path: Path, *, pnginfo: PngInfo | None = None) -> None:
    """Write a uint8 ``(C,H,W)`` tensor as a lossless PNG: temp file, then rename.

    A crash leaves either the old file, or the complete new one, never half a file.
    ``pnginfo`` adds text chunks (keyveil's ciphertext header).
    """
    arr = image.detach().cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
    write_atomic(path, lambda fh: Image.fromarray(arr).save(fh, format="PNG", pnginfo=pnginfo), overwrite=True)
