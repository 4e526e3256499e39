"""``keyveil encrypt`` and ``keyveil decrypt``: scramble image files and folder trees."""

from __future__ import annotations

import argparse
import sys

from ..folders import process_tree
from ..keys import Key
from ..schemes import UnknownSchemeError, create, list_schemes, scheme_class
from ..schemes.registry import entry
from ._common import add_color_option, parse_options


def scheme_name(text: str) -> str:
    """argparse type of ``--scheme``: a registered name or a chain ``a+b+...`` of them."""
    names = set(list_schemes())
    if text in names or (text.count("+") and all(part in names for part in text.split("+"))):
        return text
    try:
        entry(text)
    except UnknownSchemeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; chain schemes with a+b (e.g. pixel+etc)") from None
    raise argparse.ArgumentTypeError(f"{text!r} cannot be used here; see `keyveil schemes`")


def scheme_from_args(args: argparse.Namespace):
    """Build the scheme named by ``--scheme`` (or a chain ``a+b``) with ``--key`` and ``--option``s."""
    options = parse_options(args.option)
    registered = args.scheme in set(list_schemes())
    steps = [args.scheme] if registered else args.scheme.split("+")
    needs_key = any(scheme_class(step).needs_key for step in steps)
    key = Key.load(args.key) if args.key else None
    if key is None and needs_key:
        raise ValueError(f"scheme {args.scheme!r} needs a key: pass --key KEYFILE (make one with keyveil keygen)")
    if not registered and options:
        raise ValueError(f"--option is ambiguous for the chain {args.scheme!r}: build chains with options in Python "
                         "(schemes.create('compose', key, steps=[...]))")
    try:
        return create(args.scheme, key, **options) if registered else create("compose", key, steps=steps)
    except TypeError as exc:
        raise ValueError(f"bad --option for scheme {args.scheme!r}: {exc}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="an image file or a folder (walked recursively; the tree is kept)")
    p.add_argument("dst", help="output file or folder (PNG, lossless); never inside SRC")
    p.add_argument("--scheme", required=True, type=scheme_name, metavar="NAME",
                   help="scheme name (see `keyveil schemes`), or a chain a+b applied in that order")
    p.add_argument("--key", help="key file (from `keyveil keygen`)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="scheme option, repeatable (e.g. --option block_size=8)")
    p.add_argument("--workers", type=int, default=1, help="processes to use (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo and replace existing outputs")
    add_color_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    enc = sub.add_parser("encrypt", help="encrypt an image or a folder tree")
    _add_common(enc)
    enc.set_defaults(func=lambda a: run(a, decrypt=False))
    dec = sub.add_parser("decrypt", help="decrypt an image or a folder tree made by `keyveil encrypt`")
    _add_common(dec)
    dec.set_defaults(func=lambda a: run(a, decrypt=True))


def run(args: argparse.Namespace, *, decrypt: bool) -> int:
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    scheme = scheme_from_args(args)
    report = process_tree(scheme, args.src, args.dst, decrypt=decrypt, overwrite=args.overwrite,
                          workers=args.workers, mode=args.color, progress=not args.quiet)
    stream = sys.stdout if report.ok else sys.stderr
    fp = f" (key {scheme.key.fingerprint})" if scheme.key is not None else ""
    print(f"{'decrypt' if decrypt else 'encrypt'} with {args.scheme}{fp} into {args.dst}: "
          + report.summary(), file=stream)
    return 0 if report.ok else 1
