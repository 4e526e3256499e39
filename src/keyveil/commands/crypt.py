"""``keyveil encrypt`` and ``keyveil decrypt``: scramble image files and folder trees."""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any

from ..folders import process_tree
from ..keys import Key
from ..schemes import create, list_schemes, scheme_class
from ..schemes.registry import entry


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["block_size=8", "shuffle='shared'"]`` -> ``{"block_size": 8, "shuffle": "shared"}``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--option {pair!r} must look like NAME=VALUE, e.g. --option block_size=8")
        try:
            options[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[name] = raw  # a bare word is a string
    return options


def scheme_from_args(args: argparse.Namespace):
    """Build the scheme named by ``--scheme`` with ``--key`` and ``--option``s."""
    cls = scheme_class(args.scheme)
    key = Key.load(args.key) if args.key else None
    if key is None and cls.needs_key:
        raise ValueError(f"scheme {args.scheme!r} needs a key: pass --key KEYFILE (make one with keyveil keygen)")
    try:
        return create(args.scheme, key, **parse_options(args.option))
    except TypeError as exc:
        raise ValueError(f"bad --option for scheme {args.scheme!r}: {exc}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="an image file or a folder (walked recursively; the tree is kept)")
    p.add_argument("dst", help="output file or folder (PNG, lossless); never inside SRC")
    p.add_argument("--scheme", required=True, choices=list_schemes(), metavar="NAME",
                   help="scheme name (see `keyveil schemes`)")
    p.add_argument("--key", help="key file (from `keyveil keygen`)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="scheme option, repeatable (e.g. --option block_size=8)")
    p.add_argument("--workers", type=int, default=1, help="processes to use (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo and replace existing outputs")
    p.add_argument("--mode", choices=("auto", "L", "RGB"), default="auto",
                   help="auto keeps grayscale/RGB as they are; L or RGB converts every image")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    enc = sub.add_parser("encrypt", help="encrypt an image or a folder tree")
    _add_common(enc)
    enc.set_defaults(func=lambda a: run(a, decrypt=False))
    dec = sub.add_parser("decrypt", help="decrypt an image or a folder tree made by `keyveil encrypt`")
    _add_common(dec)
    dec.set_defaults(func=lambda a: run(a, decrypt=True))


def run(args: argparse.Namespace, *, decrypt: bool) -> int:
    entry(args.scheme)
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    scheme = scheme_from_args(args)
    report = process_tree(scheme, args.src, args.dst, decrypt=decrypt, overwrite=args.overwrite,
                          workers=args.workers, mode=args.mode, progress=not args.quiet)
    stream = sys.stdout if report.ok else sys.stderr
    fp = f" (key {scheme.key.fingerprint})" if scheme.key is not None else ""
    print(f"{'decrypt' if decrypt else 'encrypt'} with {args.scheme}{fp} into {args.dst}: "
          + report.summary(), file=stream)
    return 0 if report.ok else 1
