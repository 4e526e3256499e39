"""``keyveil train``: train a model on a dataset, plain or encrypted on the fly.

Works under ``torchrun`` too (``torchrun --nproc_per_node 2 -m keyveil.cli train ...``):
every process trains on its shard, rank 0 prints and writes the checkpoint.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..data import EncryptedDataset, ImageDataset, create_dataset, list_datasets
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import OPTIMIZERS, build_model, fit, is_main_process, seed_everything
from ..keys import Key
from ..schemes import Scheme, create, list_schemes, scheme_class
from .crypt import parse_options


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``imagefolder`` (``--image-size``, ``--mode``); none for the others."""
    opts: dict[str, Any] = {}
    if getattr(args, "image_size", None):
        opts["image_size"] = tuple(args.image_size)
    if getattr(args, "mode", None):
        opts["mode"] = args.mode
    return opts if args.dataset == "imagefolder" else {}


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
    p.add_argument("--mode", choices=("auto", "L", "RGB"), help="imagefolder: colour mode")
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on plain or encrypted images")
    add_data_args(p)
    add_scheme_args(p)
    p.add_argument("--model", default="smallcnn", metavar="ARCH",
                   help="smallcnn (default) or a torchvision classifier name, e.g. resnet18")
    p.add_argument("--epochs", type=int, default=3, help="total epochs (default 3)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="default adam")
    p.add_argument("--lr", type=float, help="learning rate (default: 0.001 for adam/stadam, 0.05 for sgd)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("-o", "--output", help="checkpoint to write (default: the --resume file, else model.pt)")
    p.add_argument("--resume", help="continue from this checkpoint up to --epochs in total")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _say(*a: Any) -> None:
    if is_main_process():
        print(*a, flush=True)


def run(args: argparse.Namespace) -> int:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        raise ValueError("--workers must be 0 or more")
    output = args.output or args.resume or "model.pt"
    if args.resume and not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume {args.resume}: no such checkpoint")
    scheme = build_scheme(args.scheme, args.key, args.option)
    opts = dataset_options(args)
    train = create_dataset(args.dataset, "train", data_dir=args.data_dir, **opts).limit(args.limit)
    test = create_dataset(args.dataset, "test", data_dir=args.data_dir, **opts).limit(args.test_limit)
    manifest = getattr(train, "manifest", None)
    meta = {
        "arch": args.model,
        "model_kwargs": {"in_channels": train.channels, "num_classes": train.num_classes,
                         "image_size": list(train.size)},
        "dataset": {**train.info.to_dict(), "data_dir": args.data_dir, "options": opts,
                    "limit": args.limit, "test_length": len(test)},
        "scheme": scheme_meta(scheme, args.randomness, manifest),
    }
    seed_everything(args.seed)
    model = build_model(args.model, **{**meta["model_kwargs"], "image_size": tuple(train.size)})
    enc_train = encrypt_split(train, scheme, randomness=args.randomness)
    enc_test = encrypt_split(test, scheme, randomness=args.randomness)
    what = "plain images" if meta["scheme"] is None else (
        f"{meta['scheme']['scheme']} ({meta['scheme']['applied']}, key {meta['scheme']['key_fingerprint']})")
    _say(f"training {args.model} on {args.dataset} ({len(train)} train / {len(test)} test images, "
         f"{train.channels}x{train.size[0]}x{train.size[1]}) with {what}, {args.optimizer}, {args.epochs} epochs")

    def show(r: dict[str, Any]) -> None:
        _say(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f}  "
             f"test loss {r.get('test_loss', float('nan')):.4f} acc {r.get('test_accuracy', float('nan')):.4f}  "
             f"({r['images_per_s']:.0f} img/s, {r['seconds']:.1f} s)")

    result = fit(model, enc_train, test_set=enc_test, epochs=args.epochs, batch_size=args.batch_size,
                 optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                 seed=args.seed, num_workers=args.workers, device=args.device, checkpoint=output,
                 resume=args.resume, meta=meta, progress=not args.quiet, on_epoch=show)
    if result.history:
        last = result.history[-1]
        _say(f"wrote {output} (epoch {result.epoch}, test accuracy {last.get('test_accuracy', float('nan')):.4f})")
    return 0
