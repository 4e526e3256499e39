"""Checkpoints with metadata: what was trained, on what, under which scheme (never the secret).

A checkpoint is a ``torch.save`` dictionary of plain types and tensors, so it
loads with ``weights_only=True``:

- ``format``/``version``: ``"keyveil-checkpoint"``, 1;
- ``arch``, ``model_kwargs``: enough to rebuild the model with
  :func:`keyveil.engine.build_model`;
- ``dataset``: name, split sizes, classes, geometry (:class:`keyveil.data.DatasetInfo`);
- ``scheme``: the scheme's ``config`` (name, options, **key fingerprint**) or ``None``;
- ``optimizer``, ``hparams``: optimizer name and hyperparameters;
- ``privacy``: with DP-SGD (:mod:`keyveil.engine.dp`), the spent ε, δ, noise
  multiplier, clipping norm, accountant; ``None`` or absent otherwise;
- ``epoch`` (completed), ``history`` (metrics per epoch), ``metrics`` (the last);
- ``model_state``, ``optimizer_state``, ``scheduler_state``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import save_torch_atomic
from ..errors import KeyveilError
from .models import build_model

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "model_skeleton", "check_resumable", "CHECKPOINT_FORMAT",
           "CheckpointError", "ResumeError"]

CHECKPOINT_FORMAT = "keyveil-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(KeyveilError):
    """A checkpoint file is missing, corrupt or not a keyveil checkpoint."""


class ResumeError(CheckpointError):
    """A run cannot continue from a checkpoint made for another model, dataset or scheme."""


_DATASET_FIELDS = ("name", "num_classes", "channels", "size", "classes", "options")
_SCHEME_FIELDS = ("scheme", "params", "key_fingerprint", "randomness", "applied")


def _describe(value: Any) -> str:
    return "none (plain images)" if value is None else repr(value)


def check_resumable(state: dict[str, Any], meta: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise :class:`ResumeError` listing every way ``meta`` (this run) differs from checkpoint ``state``.

    Compared, when ``meta`` has them: the architecture and its ``model_kwargs``;
    the dataset's name, classes, channels, image size and options (not the
    ``--limit``: a resumed run may see more images); the scheme's name,
    options, key fingerprint and randomness (``None``: plain images).

    Examples:
        >>> check_resumable({"arch": "smallcnn"}, {"arch": "resnet18"}, "m.pt")
        Traceback (most recent call last):
        ...
        keyveil.engine.checkpoint.ResumeError: cannot resume from m.pt: the model is 'smallcnn' there, 'resnet18' here. ...
    """
    problems: list[str] = []
    if "arch" in meta and state.get("arch") != meta["arch"]:
        problems.append(f"the model is {state.get('arch')!r} there, {meta['arch']!r} here")
    elif "model_kwargs" in meta and "model_kwargs" in state:
        theirs, ours = state["model_kwargs"], meta["model_kwargs"]
        for k in sorted(set(theirs) | set(ours)):
            a, b = theirs.get(k), ours.get(k)
            if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
                problems.append(f"the model's {k} is {a!r} there, {b!r} here")
    if "dataset" in meta:
        theirs, ours = state.get("dataset") or {}, meta["dataset"] or {}
        if theirs.get("name") != ours.get("name"):
            problems.append(f"the dataset is {theirs.get('name')!r} there, {ours.get('name')!r} here")
        else:
            for k in _DATASET_FIELDS[1:]:
                a, b = theirs.get(k), ours.get(k)
                if k in theirs and k in ours and a != b and not (k == "options" and not a and not b):
                    problems.append(f"the dataset's {k} is {a!r} there, {b!r} here")
    if "scheme" in meta:
        theirs, ours = state.get("scheme"), meta["scheme"]
        if (theirs is None) != (ours is None) or (theirs and ours and theirs.get("scheme") != ours.get("scheme")):
            problems.append(f"the scheme is {_describe(theirs and theirs.get('scheme'))} there, "
                            f"{_describe(ours and ours.get('scheme'))} here")
        elif theirs and ours:
            for k in _SCHEME_FIELDS[1:]:
                if theirs.get(k) != ours.get(k):
                    what = "key" if k == "key_fingerprint" else f"scheme's {k}"
                    problems.append(f"the {what} is {theirs.get(k)!r} there, {ours.get(k)!r} here")
    if problems:
        raise ResumeError(f"cannot resume from {path}: " + "; ".join(problems)
                          + ". Resume with the same --dataset, --model and --scheme/--key/--option, or train anew "
                          "with another -o")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) atomically: temp file, then rename."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return save_torch_atomic(payload, path, overwrite=True)


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no code runs)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a keyveil checkpoint (written by `keyveil train`)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}; this keyveil reads "
                              f"version {CHECKPOINT_VERSION}")
    return state


def model_skeleton(meta: dict[str, Any]) -> nn.Module:
    """The architecture a checkpoint's ``arch``, ``model_kwargs`` (and ``privacy``) describe, with fresh weights."""
    kwargs = dict(meta["model_kwargs"])
    kwargs["image_size"] = tuple(kwargs["image_size"])
    model = build_model(meta["arch"], **kwargs)
    if meta.get("privacy"):  # trained with DP-SGD: BatchNorm was replaced the same way
        from .dp_compat import make_dp_compatible

        model = make_dp_compatible(model)
    return model


def model_from_checkpoint(state: dict[str, Any] | str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode)."""
    if not isinstance(state, dict):
        state = load_checkpoint(state)
    model = model_skeleton(state)
    model.load_state_dict(state["model_state"])
    return model.eval()
