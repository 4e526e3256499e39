"""``keyveil vfe``: print the Visual Feature Entropy of image files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..imageio import read_image
from ..metrics import vfe
from ._common import add_color_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vfe", help="print the Visual Feature Entropy (VisualMixer's privacy metric) of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--window", type=int, default=14, help="region side in pixels (default 14)")
    p.add_argument("--beta", type=float, default=1.0, help="scaling constant (default 1)")
    add_color_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.window < 1:
        raise ValueError("--window must be a positive number of pixels")
    failed = 0
    for name in args.images:
        path = Path(name)
        try:
            image = read_image(path, args.color)
        except (ValueError, OSError) as exc:
            print(f"{path}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        value = float(vfe(image, window=args.window, beta=args.beta)[0])
        print(f"{path}\t{value:.6f}")
    return 1 if failed else 0
