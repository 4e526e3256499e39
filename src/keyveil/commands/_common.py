"""What several commands share: dataset and scheme options, one word per concept, deprecated aliases.

The command line's vocabulary (``keyveil --help`` repeats it): ``--model`` names an
architecture, ``--color`` a colour mode of images read from files (``auto``, ``L``,
``RGB``), ``--keyed`` the mode of a keyed model (``input``, ``features``,
``deformable``), ``--limit`` / ``--test-limit`` how many training / test images.
Old spellings (``--mode``, ``--arch``, ``--train-count``) still work for one release
and warn.
"""

from __future__ import annotations

import argparse
import ast
import warnings
from typing import Any

from ..data import EncryptedDataset, ImageDataset, list_datasets
from ..data.encrypted import TEST_NONCE_OFFSET
from ..keys import Key
from ..schemes import Scheme, create, list_schemes, scheme_class

__all__ = ["parse_options", "DeprecatedAlias", "warn_deprecated", "add_color_option", "add_keyed_option", "add_data_args", "add_scheme_args",
           "build_scheme", "dataset_options", "encrypt_split", "scheme_meta"]

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



COLORS = ("auto", "L", "RGB")
KEYED_MODES = ("input", "features", "deformable")


class DeprecatedAlias(argparse.Action):
    """An old option name: stores into the new option's destination and says, once, to use the new name."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, **kw)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_deprecated(str(option_string), self.new)
        setattr(namespace, self.dest, values)


def warn_deprecated(old: str, new: str) -> None:
    """The one deprecation message of the command line (a FutureWarning, one line on the terminal)."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release: use {new}", FutureWarning,
                  stacklevel=3)


def add_color_option(p: argparse.ArgumentParser | Any, *, default: str | None = "auto", what: str = "") -> None:
    """``--color auto|L|RGB`` (old name ``--mode``)."""
    p.add_argument("--color", choices=COLORS, default=default,
                   help=what or "auto keeps grayscale/RGB as they are; L or RGB converts every image")
    p.add_argument("--mode", dest="color", choices=COLORS, action=DeprecatedAlias, new="--color",
                   help=argparse.SUPPRESS)


def add_keyed_option(p: argparse.ArgumentParser | Any, *, default: str | None = "features", what: str = "") -> None:
    """``--keyed input|features|deformable`` (old name ``--mode``)."""
    p.add_argument("--keyed", choices=KEYED_MODES, default=default,
                   help=what or f"keyed model mode (default {default})")
    p.add_argument("--mode", dest="keyed", choices=KEYED_MODES, action=DeprecatedAlias, new="--keyed",
                   help=argparse.SUPPRESS)


def dataset_options(args: argparse.Namespace, *, datasets: tuple[str, ...] = ("imagefolder",)) -> dict[str, Any]:
    """Options of folder-backed datasets (``--image-size``, ``--color``); none for the others."""
    opts: dict[str, Any] = {}
    if getattr(args, "image_size", None):
        opts["image_size"] = tuple(args.image_size)
    if getattr(args, "color", None):
        opts["mode"] = args.color
    return opts if args.dataset in datasets else {}


def build_scheme(name: str | None, key_path: str | None, options: list[str] | dict[str, Any], *,
                 wrong_key: bool = False) -> Scheme | None:
    """The scheme ``name`` with the key in ``key_path`` (or a fresh random key if ``wrong_key``)."""
    if name is None:
        return None
    cls = scheme_class(name)
    if wrong_key:
        key: Key | None = Key.generate() if cls.needs_key or key_path else None
    else:
        key = Key.load(key_path) if key_path else None
    if key is None and cls.needs_key:
        raise ValueError(f"scheme {name!r} needs a key: pass --key KEYFILE (make one with keyveil keygen)")
    opts = parse_options(options) if isinstance(options, list) else dict(options)
    try:
        return create(name, key, **opts)
    except TypeError as exc:
        raise ValueError(f"bad --option for scheme {name!r}: {exc}") from None


def encrypt_split(ds: ImageDataset, scheme: Scheme | None, *, randomness: str) -> ImageDataset:
    """``ds`` encrypted on the fly by ``scheme`` (test splits get their own nonces)."""
    if scheme is None:
        return ds
    offset = TEST_NONCE_OFFSET if ds.split == "test" else 0
    return EncryptedDataset(ds, scheme, randomness=randomness, nonce_offset=offset)


def scheme_meta(scheme: Scheme | None, randomness: str, manifest: dict | None = None) -> dict | None:
    """What a checkpoint records about the scheme: config and key fingerprint, never the secret."""
    if scheme is not None:
        return {**scheme.config, "randomness": randomness if scheme.per_image else None, "applied": "on the fly"}
    if manifest is not None:
        return {"scheme": manifest.get("scheme"), "params": manifest.get("params", {}),
                "key_fingerprint": manifest.get("key_fingerprint"), "randomness": None,
                "applied": "encrypted folder"}
    return None


def add_data_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--dataset", required=required, choices=list_datasets(), metavar="NAME",
                   help="dataset name (see `keyveil datasets`)")
    p.add_argument("--data-dir", help="folder for cifar10, imagefolder (e.g. a `keyveil encrypt` output) "
                   "or a Fashion-MNIST copy")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="imagefolder: resize to H W")
    add_color_option(p, default=None, what="imagefolder / coco: colour mode (auto, L or RGB)")
    p.add_argument("--limit", type=int, help="use at most this many training images (a fixed stratified subset)")
    p.add_argument("--test-limit", type=int, help="use at most this many test images")


def add_scheme_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheme", choices=list_schemes(), metavar="NAME",
                   help="encrypt images on the fly with this scheme (see `keyveil schemes`)")
    p.add_argument("--key", help="key file (from `keyveil keygen`)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="scheme option, repeatable (e.g. --option block_size=8)")
    p.add_argument("--randomness", choices=("nonce", "fresh"), default="fresh",
                   help="per-image schemes: 'fresh' scrambles anew every epoch (default); 'nonce' uses the key "
                   "and the image index (reproducible)")


