"""``keyveil demo``: encrypt sample photos with every scheme and show the result."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..keys import Key
from ..schemes import GeometryError, create, list_schemes
from .schemes import HEADER, format_table, schemes_table


def sample_photos(size: int = 224) -> torch.Tensor:
    """A few real photos from scikit-image, centre-cropped to ``size``: uint8 ``(B,3,size,size)``."""
    from skimage import data, transform

    images = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        img = transform.resize(img, (size, size), anti_aliasing=True, preserve_range=True)
        images.append(torch.from_numpy(img.round().astype(np.uint8)).permute(2, 0, 1))
    return torch.stack(images)


def scheme_grid(x: torch.Tensor, key: Key) -> tuple[torch.Tensor, list[str]]:
    """Rows: the plain images, then each scheme's encryption of them."""
    rows, names = [x], ["plain"]
    for name in list_schemes():
        scheme = create(name, key)
        try:
            rows.append(scheme.encrypt(x))
        except GeometryError:
            continue
        names.append(name)
    return torch.stack(rows), names


def save_grid(grid: torch.Tensor, path: Path, pad: int = 4) -> Path:
    """Write a ``(rows, cols, C, H, W)`` uint8 grid of images as one PNG."""
    r, c, ch, h, w = grid.shape
    canvas = torch.full((ch, r * (h + pad) + pad, c * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(r):
        for j in range(c):
            y0, x0 = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y0:y0 + h, x0:x0 + w] = grid[i, j]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.permute(1, 2, 0).numpy().squeeze()).save(path)
    return path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demonstration on bundled real data")
    p.add_argument("-o", "--output", default="keyveil-demo", help="folder for the pictures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(2024)
    print(f"demo key {key.fingerprint} (a fixed demo seed: not secret)\n")
    print(format_table(HEADER, schemes_table()), "\n")
    grid, names = scheme_grid(sample_photos(), key)
    path = save_grid(grid.transpose(0, 1).contiguous(), out / "schemes.png")
    print(f"columns: {', '.join(names)}\nwrote {path}")
    return 0
