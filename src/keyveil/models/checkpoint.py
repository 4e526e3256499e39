"""Saving and loading keyed models, with or without their key material.

A keyed model's index buffers (and folded weights) are derived from the key,
so a checkpoint that holds them is as secret as the key. By default
:func:`save_keyed` stores the *plain* weights plus the conversion settings
and the key's public fingerprint; :func:`load_keyed` re-applies the key. With
``include_key_material=True`` it stores the keyed model as it is, and its
metadata says so (``contains_key_material`` with the key fingerprint); such a
checkpoint loads without the key.

File format (``torch.save`` of a dict, loadable with ``weights_only=True``)::

    {"format": "keyveil-keyed-model", "version": 1,
     "contains_key_material": bool, "key_fingerprint": str,
     "config": KeyedConfig.to_dict(), "state_dict": {...}, "extra": {...}}

Examples:
    >>> import tempfile, os, torch
    >>> from torch import nn
    >>> from keyveil import Key
    >>> from keyveil.models import keyed, save_keyed, load_keyed
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    >>> key = Key.generate()
    >>> knet = keyed(net, key, input_size=(1, 8, 8))
    >>> path = os.path.join(tempfile.mkdtemp(), "keyed.pt")
    >>> meta = save_keyed(knet, path)
    >>> meta["contains_key_material"]
    False
    >>> again = load_keyed(path, nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
    ...                                        nn.Linear(4 * 8 * 8, 3)), key=key)
    >>> x = torch.rand(2, 1, 8, 8)
    >>> bool(torch.equal(again(x), knet(x)))
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import save_torch_atomic
from ..keys import Key
from ..schemes import create
from .errors import KeyedModelError
from .keyed import KeyedConfig, keyed
from .keyed_vit import vit_plain_state
from .layers import KeyMaterial

__all__ = ["save_keyed", "load_keyed", "plain_state_dict", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "keyveil-keyed-model"
CHECKPOINT_VERSION = 1


def _config(model: nn.Module) -> KeyedConfig:
    cfg = getattr(model, "keyveil_config", None)
    if not isinstance(cfg, KeyedConfig):
        raise KeyedModelError("this model was not made by keyveil.models.keyed (it has no keyveil_config)")
    return cfg


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict recovered from a keyed model (no key material left)."""
    cfg = _config(model)
    state = dict(model.state_dict())
    if cfg.kind == "vit":
        vit_plain_state(model, state)
        return state
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, KeyMaterial):
            module.to_plain_state(f"{name}." if name else "", state)
    return {k: v for k, v in state.items() if not k.split(".")[0].startswith("keyveil_")}


def save_keyed(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    include_key_material: bool = False,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Save a keyed model; without its key material unless asked.

    Args:
        model: a model returned by :func:`keyveil.models.keyed`.
        path: the file to write.
        include_key_material: store the keyed model as is (index buffers and
            folded weights: the file is then as secret as the key) instead of
            the plain weights.
        extra: JSON-like metadata to store beside it (e.g. ``{"num_classes": 10}``).
        overwrite: replace an existing ``path``; otherwise :class:`FileExistsError`.

    Returns:
        The checkpoint's metadata (everything but the state dict).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.

    The file is written atomically (:func:`keyveil.atomic.write_atomic`); with
    key material it gets mode 0600 from its first byte, like a key file.

    Notes:
        A checkpoint saved with ``include_key_material=True`` is the key:
        the attack ``key-from-model`` (:class:`keyveil.attacks.KeyFromModel`)
        reads it off the file's tensors, without the architecture or the key,
        in every mode (100 % of the key; 0.004 s CPU for a 28×28 small CNN,
        0.13 s for a 3×224×224 one in ``deformable`` mode), and the model
        :func:`load_keyed` builds from it gives the key up to three probe
        images too. Give such a file only to the key holder or to a party
        already trusted with the plain images. The default checkpoint holds
        the plain weights and the key's fingerprint: the attack finds nothing
        in it, and loading it needs the key.
    """
    cfg = _config(model)
    state = model.state_dict() if include_key_material else plain_state_dict(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "contains_key_material": bool(include_key_material),
        "key_fingerprint": cfg.key_fingerprint,
        "config": cfg.to_dict(),
        "extra": dict(extra or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
    }
    save_torch_atomic(payload, path, secret=bool(include_key_material), overwrite=overwrite)
    return {k: v for k, v in payload.items() if k != "state_dict"}


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a keyed checkpoint's dict (``weights_only``: no code runs)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not Path(path).is_file():
        raise KeyedModelError(f"checkpoint {path} is a folder, not a checkpoint file")
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise KeyedModelError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise KeyedModelError(f"{path} is not a keyed-model checkpoint (format must be {CHECKPOINT_FORMAT!r}); "
                              "plain checkpoints are converted with keyveil.models.keyed or `keyveil convert`")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise KeyedModelError(f"{path} has version {payload.get('version')!r}; this keyveil reads "
                              f"version {CHECKPOINT_VERSION}")
    return payload


def _build_arch(cfg: KeyedConfig, extra: dict[str, Any]) -> nn.Module:
    spec = extra.get("model")
    if isinstance(spec, dict) and spec.get("arch"):
        # Written by `keyveil convert` from a `keyveil train` checkpoint: keyveil's builders
        # (smallcnn, vit_mini, torchvision models adapted to small or grayscale images).
        from ..engine.checkpoint import model_skeleton

        return model_skeleton(spec)
    if not cfg.arch:
        raise KeyedModelError("the checkpoint does not name its architecture: pass model=<a plain instance of it>")
    import torchvision

    kwargs = {"num_classes": int(extra["num_classes"])} if "num_classes" in extra else {}
    if cfg.kind == "vit":
        kwargs["image_size"] = cfg.input_size[-1]
    try:
        return torchvision.models.get_model(cfg.arch, weights=None, **kwargs)
    except ValueError as exc:
        raise KeyedModelError(f"the checkpoint's architecture {cfg.arch!r} is not a torchvision model ({exc}): "
                              "pass model=<a plain instance of it>") from None


def load_state_or_explain(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Load ``state`` into ``module``; ``None``, or torch's mismatch report cut to its first three lines."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        return "; ".join(lines[:3]) + (f" (+{len(lines) - 3} more)" if len(lines) > 3 else "")
    return None


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    detail = load_state_or_explain(module, state)
    if detail is not None:
        raise KeyedModelError(f"{path} does not fit the model it is loaded into: {detail}. Pass model=<a plain "
                              "instance of the architecture it was converted from>") from None


def load_keyed(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    key: Key | None = None,
    *,
    check: bool = True,
) -> nn.Module:
    """Load a keyed model saved by :func:`save_keyed`.

    Args:
        path: the checkpoint.
        model: a plain instance of the architecture (its weights are
            replaced). May be omitted when the checkpoint says how to build it:
            ``extra["model"]`` (``keyveil convert`` of a ``keyveil train``
            checkpoint: rebuilt by :func:`keyveil.engine.model_skeleton`) or a
            torchvision name in ``config.arch``.
        key: the key. Required when the checkpoint holds no key material;
            when given, it must match the recorded fingerprint.
        check: run the self-check when re-keying.

    Returns:
        The keyed model in eval mode, on CPU (move it with ``.to(device)``).

    Raises:
        KeyedModelError: not a keyed checkpoint, wrong key, or no key where one is needed.
    """
    payload = read_checkpoint(path)
    cfg = KeyedConfig.from_dict(payload["config"])
    extra = payload.get("extra", {})
    if key is not None and key.fingerprint != payload["key_fingerprint"]:
        raise KeyedModelError(f"wrong key: {path} was made with key {payload['key_fingerprint']}, "
                              f"got key {key.fingerprint}")
    if model is None:
        model = _build_arch(cfg, extra)
    state = payload["state_dict"]
    options = dict(mode=cfg.mode, input_size=cfg.input_size, kernel=cfg.kernel, mean=cfg.mean, std=cfg.std)
    if payload["contains_key_material"]:
        # The structure does not depend on the key: build it with a throw-away key,
        # then load the real index buffers and folded weights.
        stand_in = Key(bytes(32))
        out = keyed(model, stand_in, scheme=create(cfg.scheme, stand_in, **cfg.scheme_params), check=False,
                    **options)
        _load_state(out, state, path)
    else:
        if key is None:
            raise KeyedModelError(f"{path} holds no key material: pass key=<the key {payload['key_fingerprint']}>")
        _load_state(model, state, path)
        out = keyed(model, key, scheme=create(cfg.scheme, key, **cfg.scheme_params), check=check, **options)
    out.keyveil_config = cfg
    return out.eval()
