"""The ``keyveil`` command.

Sub-commands live in :mod:`keyveil.commands`, one module each; every module
defines ``register(subparsers)`` and is discovered automatically.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence

from . import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyveil",
        description="Privacy-preserving deep learning on scrambled images.",
        formatter_class=commands.OneLineHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keyveil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    shown = warnings.formatwarning
    warnings.formatwarning = _one_line  # warnings on the terminal read as the errors do
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = shown


def _one_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"keyveil: {category.__name__}: {message}\n"


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError) as exc:
        print(f"keyveil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"keyveil {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
