"""What ``keyveil convert`` and ``keyveil evaluate`` share about keyed models.

A keyed checkpoint written by ``convert`` records, in its ``extra`` metadata,
how to rebuild the plain architecture (``extra["model"]``: ``arch``,
``model_kwargs``, ``privacy`` as in a ``keyveil train`` checkpoint; absent for
a torchvision state_dict, rebuilt from ``config.arch``), the number of classes
and, when it came from ``keyveil train``, the dataset it was trained on
(``extra["dataset"]``), so that ``evaluate`` needs only the checkpoint and the
key. The key itself is never stored; its fingerprint is.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import KeyveilError
from ..keys import Key
from ._common import warn_deprecated

__all__ = ["KeyedCommandError", "refuse_existing", "load_key", "model_spec", "load_keyed_model",
           "keyed_checkpoint_payload"]


class KeyedCommandError(KeyveilError):
    """A checkpoint cannot be turned into (or run as) a keyed model as asked."""


def refuse_existing(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Fail before any work when ``path`` exists and ``--overwrite`` was not given."""
    path = Path(path)
    if path.is_dir():
        raise KeyedCommandError(f"-o {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it (or choose another -o)")


def load_key(path: str | None, *, why: str) -> Key:
    """The key in ``path`` (a :class:`~keyveil.keys.KeyFileError` names what is wrong), or a clear error if none."""
    if not path:
        raise KeyedCommandError(f"{why}: pass --key KEYFILE (the key from `keyveil keygen`)")
    return Key.load(path)


def model_spec(state: dict[str, Any]) -> dict[str, Any]:
    """How to rebuild a ``keyveil train`` checkpoint's architecture (:func:`keyveil.engine.model_skeleton`)."""
    kwargs = dict(state["model_kwargs"])
    kwargs["image_size"] = [int(v) for v in kwargs["image_size"]]
    return {"arch": state["arch"], "model_kwargs": kwargs, "privacy": bool(state.get("privacy"))}


def keyed_checkpoint_payload(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The keyed checkpoint's dict if ``path`` is one, else ``None`` (any other file)."""
    from ..models.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
    from ..models.errors import KeyedModelError

    try:
        payload = read_checkpoint(path)
    except (KeyedModelError, FileNotFoundError):
        return None
    return payload if payload.get("format") == CHECKPOINT_FORMAT else None


def load_keyed_model(path: str | os.PathLike[str], payload: dict[str, Any], key: Key | None) -> nn.Module:
    """The keyed model in ``path`` (its ``payload`` already read), re-keyed with ``key`` when it has no key material.

    A checkpoint with key material runs as stored (``key`` may be another one:
    it is then only the images' key); one without needs the very key it was
    made with (:func:`keyveil.models.load_keyed` checks the fingerprint).
    """
    from ..models import load_keyed

    if payload["contains_key_material"]:
        return load_keyed(path)
    if key is None:
        raise KeyedCommandError(f"{path} holds no key material (the default): pass --key KEYFILE with the key "
                                f"{payload['key_fingerprint']} it was converted with")
    return load_keyed(path, key=key)


def describe_key_material(args: argparse.Namespace) -> bool:
    """``--with-key-material`` (warning on the deprecated, now default, ``--without-key-material``)."""
    if getattr(args, "without_key_material", False):
        if args.with_key_material:
            raise KeyedCommandError("--with-key-material and --without-key-material contradict each other")
        warn_deprecated("--without-key-material", "nothing (no key material is the default)")
    return bool(args.with_key_material)
