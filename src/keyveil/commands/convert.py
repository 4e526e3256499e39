"""``keyveil convert``: turn a plain checkpoint into a keyed model checkpoint.

``PLAIN.pt`` is a ``torch.save`` of either a ``state_dict`` of the torchvision
architecture named by ``--arch`` or a dict holding it under ``"model"`` (or
``"state_dict"``), as training scripts usually write:
``{"model": model.state_dict(), "epoch": ..., ...}``. The output is a keyed
checkpoint for :func:`keyveil.models.load_keyed`; by default it contains the
key material (it is as secret as the key), ``--without-key-material`` stores
the plain weights and the conversion settings instead (re-keyed on load).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from ..keys import Key


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a plain CNN/ViT checkpoint into a keyed model for encrypted images",
        description=(
            "Convert a plain torchvision checkpoint into a keyed model that classifies encrypted images "
            "exactly as the plain model classifies plain ones. PLAIN.pt holds a state_dict of --arch, or a "
            "dict with the state_dict under 'model' (or 'state_dict')."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="the plain checkpoint (state_dict or {'model': state_dict})")
    p.add_argument("--arch", required=True, help="torchvision architecture name, e.g. resnet50, vgg16_bn, vit_b_16")
    p.add_argument("--key", required=True, help="key file (from `keyveil keygen`)")
    p.add_argument("--scheme", default="pixel", help="pixel (CNNs) or vit (torchvision ViT); default pixel")
    p.add_argument("--mode", default="features", choices=["input", "features", "deformable"],
                   help="keyed CNN mode (default features; ignored for ViTs)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default: read from the checkpoint's last layer)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", default=None,
                   help="input size H W (or C H W, or H): required for CNNs; ViTs use their image size")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="ViT input normalization mean")
    p.add_argument("--std", type=float, nargs="+", default=None, help="ViT input normalization std")
    p.add_argument("--without-key-material", action="store_true",
                   help="store plain weights + settings only (load_keyed then needs the key)")
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
    raise ValueError(
        f"{path} holds no state_dict: save one with torch.save(model.state_dict(), path) "
        "or torch.save({'model': model.state_dict()}, path)"
    )


def _num_classes(state: dict) -> int | None:
    last = None
    for k, v in state.items():
        if k.endswith(".weight") and v.dim() == 2:
            last = v.shape[0]
    return last


def run(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    from ..models import keyed, save_keyed

    key = Key.load(args.key)
    try:
        raw = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist") from None
    state = _state_dict(raw, args.checkpoint)
    num_classes = args.num_classes or _num_classes(state)
    kwargs = {"num_classes": num_classes} if num_classes else {}
    try:
        model = torchvision.models.get_model(args.arch, weights=None, **kwargs)
    except ValueError as exc:
        raise ValueError(f"unknown --arch {args.arch!r}: {exc}") from None
    model.load_state_dict(state)
    model.eval()
    start = time.perf_counter()
    out = keyed(model, key, scheme=args.scheme, mode=args.mode, input_size=args.input_size,
                mean=args.mean, std=args.std)
    seconds = time.perf_counter() - start
    out.keyveil_config = dataclasses.replace(out.keyveil_config, arch=args.arch)
    meta = save_keyed(out, args.output, include_key_material=not args.without_key_material,
                      extra={"num_classes": num_classes} if num_classes else {})
    cfg = out.keyveil_config
    print(f"converted {args.arch} ({cfg.kind}, scheme {cfg.scheme}, mode {cfg.mode}, input {cfg.input_size}) "
          f"with key {key.fingerprint} in {seconds:.2f} s; self-check passed")
    if meta["contains_key_material"]:
        print(f"wrote {args.output}: contains key material (keep it as secret as the key)")
    else:
        print(f"wrote {args.output}: plain weights + settings, no key material (load_keyed needs the key)")
    return 0
