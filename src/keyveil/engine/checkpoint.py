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

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "CHECKPOINT_FORMAT", "CheckpointError"]

CHECKPOINT_FORMAT = "keyveil-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(KeyveilError):
    """A checkpoint file is missing, corrupt or not a keyveil checkpoint."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) atomically: temp file, then rename."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return save_torch_atomic(payload, path, overwrite=True)


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a keyveil checkpoint (written by `keyveil train`)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}; this keyveil reads "
                              f"version {CHECKPOINT_VERSION}")
    return state


def model_from_checkpoint(state: dict[str, Any] | str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode)."""
    if not isinstance(state, dict):
        state = load_checkpoint(state)
    kwargs = dict(state["model_kwargs"])
    kwargs["image_size"] = tuple(kwargs["image_size"])
    model = build_model(state["arch"], **kwargs)
    if state.get("privacy"):  # trained with DP-SGD: BatchNorm was replaced the same way
        from .dp_compat import make_dp_compatible

        model = make_dp_compatible(model)
    model.load_state_dict(state["model_state"])
    return model.eval()
