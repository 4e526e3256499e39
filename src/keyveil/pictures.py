"""Picture grids a person looks at: rows of images, with the rows and columns named in the picture itself.

One renderer for every grid keyveil writes (``keyveil demo``, the
experiments, the security report). It imports nothing else from keyveil, so
any part of the library can use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import KeyveilError

__all__ = ["GridError", "MIN_CELL_HEIGHT", "auto_scale", "column_labels", "render_grid", "save_grid"]

MIN_CELL_HEIGHT = 64
"""With ``scale=None``, images are enlarged (nearest neighbour) to at least this many pixels high."""

_TEXT_PAD = 4  # white space around every piece of text, in output pixels
_MIN_FONT = 8
_MAX_FONT = 22
_INK = (0, 0, 0)
_ELLIPSIS = "…"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class GridError(KeyveilError):
    """The rows or labels given to :func:`render_grid` cannot be drawn as one grid."""


def auto_scale(height: int, *, min_height: int = MIN_CELL_HEIGHT) -> int:
    """The smallest whole enlargement that makes an image ``height`` pixels high at least ``min_height`` high.

    Examples:
        >>> auto_scale(28), auto_scale(32), auto_scale(224)
        (3, 2, 1)
    """
    return max(1, math.ceil(min_height / max(1, int(height))))


def column_labels(targets: Sequence[int] | torch.Tensor, classes: Sequence[str] | None = None, *,
                  prefix: str = "image") -> list[str]:
    """Names for a row of sample images: their class names, or ``"<prefix> 1..n"`` without usable classes.

    Examples:
        >>> column_labels([2, 0], ["cat", "dog", "frog"]), column_labels([2, 0], prefix="test")
        (['frog', 'cat'], ['test 1', 'test 2'])
    """
    ys = [int(y) for y in targets]
    names = [str(c) for c in classes] if classes else []
    if names and all(0 <= y < len(names) for y in ys):
        return [names[y] for y in ys]
    return [f"{prefix} {i}" for i in range(1, len(ys) + 1)]


def render_grid(
    rows: Sequence[torch.Tensor],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    pad: int = 2,
    scale: int | None = None,
) -> Image.Image:
    """Draw rows of images as one picture, with row names on the left and column names on top.

    The images are enlarged (nearest neighbour, by ``scale``) before any text
    is drawn, so the text has the same, legible size whatever the images'
    size. Row ``i`` image ``j`` sits at
    ``(left + pad + j * (W * scale + pad), top + pad + i * (H * scale + pad))``,
    where ``left`` is the width of the row-label margin and ``top`` the height
    of the title and column-label bands (both 0 without labels or title).
    A row shorter than the longest leaves its last cells white.

    Args:
        rows: images per row, each ``(N, C, H, W)`` with the same ``C, H, W``
            (C is 1 or 3; 1-channel rows are shown grey next to RGB rows).
            uint8, or float in ``[0, 1]`` (clamped, then rounded to uint8).
        row_labels: one name per row, drawn in a left margin.
        col_labels: one name per column (as many as the longest row has
            images), drawn above the columns; long names wrap at spaces and
            are shortened with "…" if they still do not fit.
        title: a line above everything (wrapped if long).
        pad: white pixels between and around the images.
        scale: whole-number enlargement of the images; ``None`` picks
            :func:`auto_scale` of the image height (cells at least
            :data:`MIN_CELL_HEIGHT` pixels high).

    Returns:
        An RGB image when there are labels, a title or colour rows, else a
        greyscale (``L``) one.

    Raises:
        GridError: (a ``ValueError``) listing every problem: no rows, rows that
            are not 4-D or disagree on ``C, H, W``, unsupported channels, label
            counts that do not match, a negative ``pad`` or a ``scale`` below 1.

    Examples:
        >>> import torch
        >>> x = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
        >>> img = render_grid([x, x + 255])
        >>> img.size, img.mode   # 3 columns and 2 rows of 84x84 cells, 2 px apart
        ((260, 174), 'L')
        >>> render_grid([x, x], row_labels=["plain", "pixel"], col_labels=["a", "b", "c"]).mode
        'RGB'
        >>> render_grid([x], row_labels=["plain", "pixel"])
        Traceback (most recent call last):
            ...
        keyveil.pictures.GridError: cannot draw the grid: 2 row labels for 1 rows (give one label per row)
    """
    rows = list(rows)
    _check(rows, row_labels, col_labels, pad, scale)
    rows = [_to_uint8(r) for r in rows]
    h, w = rows[0].shape[-2:]
    s = auto_scale(h) if scale is None else int(scale)
    ch, cw = h * s, w * s
    n = max(r.shape[0] for r in rows)
    rgb = any(r.shape[1] == 3 for r in rows) or bool(row_labels or col_labels or title)

    size = max(_MIN_FONT, min(_MAX_FONT, round(ch / 5)))
    font = _font(size)
    line_h = _line_height(font)
    row_lines = [str(t).split("\n") for t in row_labels] if row_labels else []
    left = 0
    if row_lines:
        left = max(_width(line, font) for lines in row_lines for line in lines) + 2 * _TEXT_PAD

    col_font, col_lines = font, []
    if col_labels:
        col_font = _fitting_font([str(t) for t in col_labels], cw, size)
        col_lines = [_wrap(str(t), col_font, cw) for t in col_labels]
    col_h = _line_height(col_font)
    band = max(len(lines) for lines in col_lines) * col_h + 2 * _TEXT_PAD if col_lines else 0

    grid_w = left + pad + n * (cw + pad)
    title_font = _font(min(_MAX_FONT + 2, size + 2))
    title_h = _line_height(title_font)
    title_lines = _wrap(str(title), title_font, max(grid_w - 2 * _TEXT_PAD, 160)) if title else []
    title_band = len(title_lines) * title_h + 2 * _TEXT_PAD if title_lines else 0
    width = max([grid_w] + [_width(t, title_font) + 2 * _TEXT_PAD for t in title_lines])
    top = title_band + band
    height = top + pad + len(rows) * (ch + pad)

    canvas = np.full((height, width, 3 if rgb else 1), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        big = row.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
        big = big.expand(-1, 3, -1, -1) if rgb and big.shape[1] == 1 else big
        for j in range(row.shape[0]):
            y0, x0 = top + pad + i * (ch + pad), left + pad + j * (cw + pad)
            canvas[y0:y0 + ch, x0:x0 + cw] = big[j].permute(1, 2, 0).numpy()
    img = Image.fromarray(canvas if rgb else canvas[..., 0], "RGB" if rgb else "L")
    if not (row_labels or col_labels or title):
        return img

    draw = ImageDraw.Draw(img)
    y = _TEXT_PAD
    for line in title_lines:
        draw.text(((width - _width(line, title_font)) // 2, y), line, fill=_INK, font=title_font)
        y += title_h
    for j, lines in enumerate(col_lines):
        x0 = left + pad + j * (cw + pad)
        y = title_band + band - _TEXT_PAD - len(lines) * col_h  # bottom-aligned, next to the images
        for line in lines:
            draw.text((x0 + (cw - _width(line, col_font)) // 2, y), line, fill=_INK, font=col_font)
            y += col_h
    for i, lines in enumerate(row_lines):
        y = top + pad + i * (ch + pad) + max(0, (ch - len(lines) * line_h) // 2)
        for line in lines:
            draw.text((_TEXT_PAD, y), line, fill=_INK, font=font)
            y += line_h
    return img


def save_grid(
    rows: Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    pad: int = 2,
    scale: int | None = None,
) -> Path:
    """Write :func:`render_grid` of ``rows`` as a PNG at ``path`` (parent folders made); returns the path.

    Examples:
        >>> import tempfile, torch
        >>> from PIL import Image
        >>> x = torch.rand(4, 3, 32, 32)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     p = save_grid([x, x.flip(-1)], Path(tmp) / "a" / "grid.png", row_labels=["plain", "flipped"],
        ...                   col_labels=[f"image {i}" for i in range(1, 5)])
        ...     Image.open(p).mode
        'RGB'
    """
    img = render_grid(rows, row_labels=row_labels, col_labels=col_labels, title=title, pad=pad, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _check(rows: list, row_labels, col_labels, pad: int, scale: int | None) -> None:
    problems = []
    if not rows:
        problems.append("no rows (give at least one (N, C, H, W) batch of images)")
    bad = [i for i, r in enumerate(rows) if not isinstance(r, torch.Tensor) or r.dim() != 4]
    if bad:
        problems.append(f"rows {bad} are not 4-D (N, C, H, W) tensors")
    good = [r for r in rows if isinstance(r, torch.Tensor) and r.dim() == 4]
    if any(r.shape[1] not in (1, 3) for r in good):
        problems.append(f"channels must be 1 or 3, got {sorted({int(r.shape[1]) for r in good})}")
    sizes = sorted({tuple(r.shape[-2:]) for r in good})
    if len(sizes) > 1:
        problems.append(f"rows disagree on the image size (H, W): {sizes}")
    if row_labels is not None and len(row_labels) != len(rows):
        problems.append(f"{len(row_labels)} row labels for {len(rows)} rows (give one label per row)")
    n = max((r.shape[0] for r in good), default=0)
    if col_labels is not None and len(col_labels) != n:
        problems.append(f"{len(col_labels)} column labels for {n} columns (the longest row has {n} images; "
                        "give one label per column)")
    if pad < 0:
        problems.append(f"pad must be >= 0, got {pad}")
    if scale is not None and int(scale) < 1:
        problems.append(f"scale must be a whole number >= 1 (or None for automatic), got {scale}")
    if problems:
        raise GridError("cannot draw the grid: " + "; ".join(problems))


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():
        return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.dtype == torch.bool:
        return x.to(torch.uint8) * 255
    return x.clamp(0, 255).to(torch.uint8)


@lru_cache(maxsize=32)
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _width(text: str, font: Font) -> int:
    return int(math.ceil(font.getbbox(text)[2])) if text else 0


def _line_height(font: Font) -> int:
    return int(math.ceil(font.getbbox("Ag|")[3])) + 2


def _fitting_font(labels: list[str], width: int, size: int) -> Font:
    """The largest font, ``size`` at most, in which every word of ``labels`` fits ``width`` pixels."""
    words = [w for t in labels for w in t.split()] or [""]
    for s in range(size, _MIN_FONT - 1, -1):
        font = _font(s)
        if max(_width(w, font) for w in words) <= width:
            return font
    return _font(_MIN_FONT)


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """``text`` broken at spaces and newlines into lines ``width`` pixels wide; too-long words end in "…"."""
    lines = []
    for para in text.split("\n"):
        line = ""
        for word in para.split():
            joined = f"{line} {word}" if line else word
            if line and _width(joined, font) > width:
                lines.append(line)
                line = word
            else:
                line = joined
        lines.append(line)
    return [_shorten(line, font, width) for line in lines]


def _shorten(text: str, font: Font, width: int) -> str:
    if _width(text, font) <= width:
        return text
    while text and _width(text + _ELLIPSIS, font) > width:
        text = text[:-1]
    return text + _ELLIPSIS
