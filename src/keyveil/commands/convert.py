"""``keyveil convert``: turn a plain checkpoint into a keyed model checkpoint.

``--checkpoint`` is either

- a checkpoint written by ``keyveil train`` (on plain images): its
  architecture (any ``--model`` train knows: ``smallcnn``, ``vit_mini``,
  torchvision classifiers adapted to small or grayscale images), number of
  classes, input size and dataset are read from it; or
- a ``torch.save`` of a ``state_dict`` of the torchvision architecture named
  by ``--model`` (or a dict holding it under ``"model"``/``"state_dict"``, as
  training scripts usually write), with ``--input-size`` for CNNs.

The output is a keyed checkpoint for :func:`keyveil.models.load_keyed` and
``keyveil evaluate``. By default it holds **no key material**: the plain
weights, the conversion settings and the key's public fingerprint; the key
re-attaches on load. ``--with-key-material`` stores the keyed model's index
buffers instead: such a file *is* the key (``key-from-model`` reads it off),
so it is written with mode 0600 like a key file. No output is ever replaced
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from ._common import DeprecatedAlias, add_keyed_option
from ._keyed import KeyedCommandError, describe_key_material, model_spec, refuse_existing


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a plain CNN/ViT checkpoint into a keyed model for encrypted images",
        description=(
            "Convert a plain checkpoint into a keyed model that classifies encrypted images exactly as the plain "
            "model classifies plain ones. --checkpoint is a `keyveil train` checkpoint (architecture, classes, "
            "input size and dataset are read from it) or a torchvision state_dict of --model (or a dict with it "
            "under 'model' / 'state_dict'). The output holds no key material unless --with-key-material."
        ),
    )
    p.add_argument("--checkpoint", required=True,
                   help="a `keyveil train` checkpoint, or a state_dict file (state_dict or {'model': state_dict})")
    p.add_argument("--model", metavar="ARCH",
                   help="the architecture: read from a `keyveil train` checkpoint; for a state_dict file a "
                   "torchvision name (resnet50, vgg16_bn, vit_b_16, ...) or smallcnn / vit_mini")
    p.add_argument("--arch", dest="model", action=DeprecatedAlias, new="--model", help=argparse.SUPPRESS)
    p.add_argument("--key", required=True, help="key file (from `keyveil keygen`)")
    p.add_argument("--scheme", default="pixel", help="pixel (CNNs) or vit (torchvision ViT); default pixel")
    add_keyed_option(p, what="keyed CNN mode: input, features (default) or deformable; ignored for ViTs")
    p.add_argument("--num-classes", type=int, default=None,
                   help="state_dict files: classifier outputs (default: read from the last layer)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", default=None,
                   help="input size H W (or C H W, or H): read from a `keyveil train` checkpoint; required for "
                   "CNN state_dicts; ViTs use their image size")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="ViT input normalization mean")
    p.add_argument("--std", type=float, nargs="+", default=None, help="ViT input normalization std")
    p.add_argument("--with-key-material", action="store_true",
                   help="store the keyed model's index buffers (the file is then as secret as the key: mode "
                   "0600); default: plain weights + settings + key fingerprint, re-keyed on load")
    p.add_argument("--without-key-material", action="store_true",
                   help="deprecated, does nothing: no key material is the default")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("-o", "--output", required=True, help="where to write the keyed checkpoint")
    p.set_defaults(func=run)


def _state_dict(obj: object, path: str) -> dict:
    import torch

    if isinstance(obj, dict):
        for name in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(name), dict):
                obj = obj[name]
                break
        if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise KeyedCommandError(
        f"{path} holds no state_dict: give a `keyveil train` checkpoint, or save one with "
        "torch.save(model.state_dict(), path) or torch.save({'model': model.state_dict()}, path)"
    )


def _num_classes(state: dict) -> int | None:
    last = None
    for k, v in state.items():
        if k.endswith(".weight") and v.dim() == 2:
            last = v.shape[0]
    return last


def _load_weights(model: Any, state: dict, what: str) -> None:
    from ..models.checkpoint import load_state_or_explain

    detail = load_state_or_explain(model, state)
    if detail is not None:
        raise KeyedCommandError(f"the weights do not fit {what}: {detail}. Give the --model (and --num-classes, "
                           "--input-size channels) they were trained with; a `keyveil train` checkpoint carries "
                           "them itself") from None


def _from_train_checkpoint(raw: dict, args: argparse.Namespace) -> tuple[Any, str, tuple, dict]:
    """Plain model, arch, input size and extra metadata from a ``keyveil train`` checkpoint."""
    from ..engine import model_from_checkpoint
    from ..engine.checkpoint import CHECKPOINT_VERSION

    state = raw
    if state.get("version") != CHECKPOINT_VERSION:
        raise KeyedCommandError(f"{args.checkpoint} has checkpoint version {state.get('version')}; this keyveil reads "
                           f"version {CHECKPOINT_VERSION}")
    if state.get("task") == "detection":
        raise KeyedCommandError(f"{args.checkpoint} is a detector: run it keyed with `keyveil evaluate --keyed MODE "
                           "--scheme pixel --key KEYFILE`")
    if state.get("scheme"):
        s = state["scheme"]
        raise KeyedCommandError(f"{args.checkpoint} was trained on {s.get('scheme')}-encrypted images (key "
                           f"{s.get('key_fingerprint')}): it already takes encrypted images. convert keys a model "
                           "trained on plain images")
    arch = state["arch"]
    if args.model and args.model != arch:
        raise KeyedCommandError(f"{args.checkpoint} holds a {arch!r}, not --model {args.model!r} (drop --model: a "
                           "`keyveil train` checkpoint names its architecture)")
    if args.num_classes and args.num_classes != state["model_kwargs"]["num_classes"]:
        raise KeyedCommandError(f"{args.checkpoint} has {state['model_kwargs']['num_classes']} classes, not "
                           f"--num-classes {args.num_classes} (drop --num-classes)")
    spec = model_spec(state)
    model = model_from_checkpoint(state)
    kw = spec["model_kwargs"]
    size = (int(kw["in_channels"]), *kw["image_size"])
    if args.input_size and tuple(args.input_size) not in (size, size[1:]):
        raise KeyedCommandError(f"{args.checkpoint} was trained on {'x'.join(map(str, size))} images, not --input-size "
                           f"{' '.join(map(str, args.input_size))} (drop --input-size)")
    extra = {"num_classes": int(kw["num_classes"]), "model": spec, "dataset": dict(state.get("dataset") or {}),
             "source": {"checkpoint": str(args.checkpoint), "epoch": state.get("epoch"),
                        "test_accuracy": (state.get("metrics") or {}).get("test_accuracy")}}
    return model, arch, size, extra


def _from_state_dict(raw: object, args: argparse.Namespace) -> tuple[Any, str, Any, dict]:
    """Plain model, arch, input size and extra metadata from a state_dict file and ``--model``."""
    import torchvision

    from ..engine import build_model, list_models

    state = _state_dict(raw, args.checkpoint)
    if not args.model:
        raise KeyedCommandError(f"{args.checkpoint} is a state_dict, which does not name its architecture: pass "
                           "--model ARCH (e.g. resnet18); a `keyveil train` checkpoint needs none")
    num_classes = args.num_classes or _num_classes(state)
    extra: dict[str, Any] = {"num_classes": num_classes} if num_classes else {}
    if args.model in torchvision.models.list_models(module=torchvision.models):
        model = torchvision.models.get_model(args.model, weights=None, **({"num_classes": num_classes}
                                                                           if num_classes else {}))
    elif args.model in list_models():  # keyveil's own builders: the geometry comes from --input-size
        if not args.input_size or len(args.input_size) != 3 or not num_classes:
            raise KeyedCommandError(f"--model {args.model} from a state_dict needs --input-size C H W and "
                               "--num-classes (or give the `keyveil train` checkpoint)")
        c, h, w = args.input_size
        kwargs = {"in_channels": c, "num_classes": num_classes, "image_size": [h, w]}
        model = build_model(args.model, **{**kwargs, "image_size": (h, w)})
        extra["model"] = {"arch": args.model, "model_kwargs": kwargs, "privacy": False}
    else:
        raise KeyedCommandError(f"unknown --model {args.model!r}: a torchvision classifier name (e.g. resnet18, "
                           "vgg16_bn, vit_b_16), smallcnn or vit_mini")
    _load_weights(model, state, f"--model {args.model}")
    return model.eval(), args.model, args.input_size, extra


def run(args: argparse.Namespace) -> int:
    import torch

    from ..engine.checkpoint import CHECKPOINT_FORMAT as TRAIN_FORMAT
    from ..keys import Key
    from ..models import keyed, save_keyed
    from ..models.checkpoint import CHECKPOINT_FORMAT as KEYED_FORMAT

    with_material = describe_key_material(args)
    refuse_existing(args.output, args.overwrite)
    key = Key.load(args.key)
    try:
        raw = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist") from None
    except IsADirectoryError:
        raise KeyedCommandError(f"checkpoint {args.checkpoint} is a folder, not a checkpoint file") from None
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise KeyedCommandError(f"{args.checkpoint} cannot be read as a checkpoint ({type(exc).__name__})") from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt == KEYED_FORMAT:
        raise KeyedCommandError(f"{args.checkpoint} is already a keyed model (key {raw.get('key_fingerprint')}): run it "
                           "with `keyveil evaluate --checkpoint ... --key KEYFILE`")
    if fmt == TRAIN_FORMAT:
        model, arch, input_size, extra = _from_train_checkpoint(raw, args)
    else:
        model, arch, input_size, extra = _from_state_dict(raw, args)
    del raw
    start = time.perf_counter()
    out = keyed(model, key, scheme=args.scheme, mode=args.keyed, input_size=input_size, mean=args.mean,
                std=args.std)
    seconds = time.perf_counter() - start
    out.keyveil_config = dataclasses.replace(out.keyveil_config, arch=arch)
    meta = save_keyed(out, args.output, include_key_material=with_material, extra=extra, overwrite=args.overwrite)
    cfg = out.keyveil_config
    print(f"converted {arch} ({cfg.kind}, scheme {cfg.scheme}, mode {cfg.mode}, input "
          f"{'x'.join(map(str, cfg.input_size))}) with key {key.fingerprint} in {seconds:.2f} s; self-check passed")
    if meta["contains_key_material"]:
        print(f"wrote {args.output} (mode 0600): contains key material, it IS the key: keep it as secret as the key")
    else:
        print(f"wrote {args.output}: plain weights + settings + key fingerprint, no key material "
              f"(running it needs the key {key.fingerprint})")
    return 0
