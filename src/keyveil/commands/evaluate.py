"""``keyveil evaluate``: accuracy, loss, confusion matrix and predictions of a checkpoint on a dataset.

By default the test split is encrypted the way the checkpoint was trained
(its scheme and options; pass the same ``--key``). ``--wrong-key`` encrypts
with a fresh random key instead, ``--plain`` not at all, and ``--scheme``
picks another scheme.

Keyed models run the same way:

- a keyed checkpoint written by ``keyveil convert`` runs on images encrypted
  with its scheme and ``--key`` (the key re-attaches to a checkpoint without
  key material; its fingerprint must match); the dataset is the one recorded
  in the checkpoint, or ``--dataset``;
- ``--keyed MODE`` on a plain classifier (or detector) checkpoint converts it
  with ``--key`` on the fly and runs it on ``--scheme`` (default ``pixel``)
  images.

Either gives exactly the plain model's predictions on the plain images. The
report (JSON) records the key's fingerprint, never the secret.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..data import ImageDataset, create_dataset
from ..engine import CheckpointError, EvalResult, evaluate, load_checkpoint, model_from_checkpoint
from ..errors import KeyveilError
from ..keys import Key
from ..schemes import Scheme, create, scheme_class
from ._common import add_data_args, build_scheme, dataset_options, encrypt_split, parse_options
from ._keyed import KeyedCommandError, keyed_checkpoint_payload, load_key, load_keyed_model


class EvaluateError(KeyveilError):
    """The evaluation asked for cannot run: no dataset, no key, images the model does not take."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test a checkpoint: accuracy, loss, confusion matrix (JSON)")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by `keyveil train`, or a keyed model written by `keyveil convert`")
    add_data_args(p, required=False)
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--scheme", help="encrypt with this scheme (default: the checkpoint's)")
    p.add_argument("--key", help="key file for the scheme")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="scheme option, repeatable (default: the checkpoint's options)")
    p.add_argument("--randomness", choices=("nonce", "fresh"), default="fresh",
                   help="per-image schemes: fresh randomness (default) or key + image index")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--wrong-key", action="store_true", help="encrypt with a fresh random key (not the right one)")
    which.add_argument("--plain", action="store_true", help="evaluate on plain (unencrypted) images")
    p.add_argument("--keyed", choices=("input", "features", "deformable"),
                   help="convert the plain classifier or detector with --key in this mode and run it on --scheme "
                   "(default pixel) images: the plain model's predictions on plain images")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--output", help="JSON report (default: CHECKPOINT with .eval.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.output and Path(args.output).is_dir():
        raise EvaluateError(f"-o {args.output} is a folder; give the JSON report's file name")
    try:
        state = load_checkpoint(args.checkpoint)
    except CheckpointError:
        payload = keyed_checkpoint_payload(args.checkpoint)
        if payload is None:
            raise
        return _run_keyed_checkpoint(args, payload)
    if state.get("task") == "detection":
        from ._detection import evaluate_detection

        return evaluate_detection(args, state)
    _dataset_from(args, state.get("dataset") or {})
    ck_scheme = state.get("scheme")
    model = model_from_checkpoint(state)
    keyed_info: dict[str, Any] | None = None
    if args.keyed:
        model, scheme, keyed_info = _keyed_on_the_fly(args, state, model)
    elif args.plain:
        scheme = None
    elif args.scheme or (ck_scheme and ck_scheme.get("applied") == "on the fly"):
        name = args.scheme or ck_scheme["scheme"]
        options = args.option if (args.scheme or args.option) else dict(ck_scheme.get("params", {}))
        needs = scheme_class(name).needs_key
        if needs and not args.key and not args.wrong_key:
            raise EvaluateError(f"the images must be encrypted with {name!r} (the checkpoint was trained on it, "
                                f"key {(ck_scheme or {}).get('key_fingerprint')}): pass --key KEYFILE, or "
                                "--wrong-key / --plain to test without it")
        scheme = build_scheme(name, args.key, options, wrong_key=args.wrong_key)
    else:
        scheme = None
    ds = _test_split(args, state.get("dataset") or {})
    kw = state["model_kwargs"]
    _check_geometry(args, (int(kw["in_channels"]), *(int(v) for v in kw["image_size"])), ds)
    fp = scheme.key.fingerprint if scheme is not None and scheme.key is not None else None
    if (keyed_info is None and ck_scheme and fp and ck_scheme.get("key_fingerprint") not in (None, fp)
            and not args.wrong_key):
        print(f"note: evaluating with key {fp}, the checkpoint was trained with key {ck_scheme['key_fingerprint']}")
    return _evaluate_and_report(args, model, ds, scheme, state["model_kwargs"]["num_classes"], keyed_info)


def _dataset_from(args: argparse.Namespace, trained: dict[str, Any]) -> None:
    """Default ``--dataset``/``--data-dir`` to what the checkpoint was trained on."""
    args.dataset = args.dataset or trained.get("name")
    if args.dataset is None:
        raise EvaluateError(f"{args.checkpoint} does not name its dataset; pass --dataset")
    if args.data_dir is None and args.dataset == trained.get("name"):
        args.data_dir = trained.get("data_dir")


def _check_geometry(args: argparse.Namespace, takes: tuple[int, ...], ds: ImageDataset) -> None:
    has = (ds.channels, *ds.size)
    if tuple(takes) != tuple(has):
        raise EvaluateError(f"{args.checkpoint} takes {'x'.join(map(str, takes))} images; {args.dataset}/"
                            f"{args.split} has {'x'.join(map(str, has))}: evaluate it on the dataset it was "
                            "trained on (imagefolder: --image-size H W, --mode L or RGB)")


def _test_split(args: argparse.Namespace, trained: dict[str, Any]) -> ImageDataset:
    opts = dataset_options(args) or dict(trained.get("options") or {})
    return create_dataset(args.dataset, args.split, data_dir=args.data_dir, **opts).limit(args.test_limit)


def _image_scheme(name: str, params: dict[str, Any], key: Key | None, args: argparse.Namespace) -> Scheme | None:
    """The images' scheme for a keyed model: its own scheme and options, the right key or (``--wrong-key``) a random one."""
    if args.plain:
        return None
    if args.wrong_key:
        key = Key.generate()
    elif key is None:
        raise EvaluateError(f"the keyed model runs on {name}-encrypted images: pass --key KEYFILE (or "
                            "--wrong-key / --plain to see it fail without the key)")
    return create(name, key, **params)


def _keyed_on_the_fly(args: argparse.Namespace, state: dict[str, Any], model: Any) -> tuple[Any, Any, dict]:
    """``--keyed MODE`` on a plain classifier checkpoint: convert it with ``--key``, encrypt the images to match."""
    from ..models import keyed

    ck_scheme = state.get("scheme")
    if ck_scheme:
        raise KeyedCommandError(f"--keyed converts a model trained on plain images; {args.checkpoint} was trained on "
                                f"{ck_scheme.get('scheme')}-encrypted images (key {ck_scheme.get('key_fingerprint')}):"
                                " evaluate it with --key KEYFILE and without --keyed")
    if args.plain:
        raise KeyedCommandError("--keyed runs the model on encrypted images: drop --plain (or drop --keyed)")
    key = load_key(args.key, why="--keyed converts the model with the key")
    name = args.scheme or "pixel"
    options = parse_options(args.option)
    kw = state["model_kwargs"]
    size = (int(kw["in_channels"]), *(int(v) for v in kw["image_size"]))
    out = keyed(model, key, scheme=create(name, key, **options) if options else name, mode=args.keyed,
                input_size=size)
    cfg = out.keyveil_config
    scheme = _image_scheme(cfg.scheme, cfg.scheme_params, key, args)
    info = {"mode": cfg.mode, "key_fingerprint": key.fingerprint, "converted": "on the fly",
            "scheme": cfg.scheme, "kind": cfg.kind}
    return out, scheme, info


def _run_keyed_checkpoint(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    """A keyed checkpoint from ``keyveil convert`` on images encrypted with its scheme and the key."""
    from ..models.keyed import KeyedConfig

    cfg = KeyedConfig.from_dict(payload["config"])
    extra = payload.get("extra") or {}
    problems = []
    if args.keyed:
        problems.append(f"--keyed converts a plain checkpoint; {args.checkpoint} is already keyed "
                        f"({cfg.mode} mode): drop --keyed")
    if args.scheme and args.scheme != cfg.scheme:
        problems.append(f"{args.checkpoint} was converted for {cfg.scheme!r} images, not --scheme {args.scheme!r}")
    if args.option:
        problems.append(f"--option: the keyed model fixes its scheme's options ({cfg.scheme_params or 'defaults'})")
    if problems:
        raise KeyedCommandError("; ".join(problems))
    key = Key.load(args.key) if args.key else None
    model = load_keyed_model(args.checkpoint, payload, key)
    if key is not None and key.fingerprint != cfg.key_fingerprint and not args.wrong_key:
        print(f"note: {args.checkpoint} holds the key material of key {cfg.key_fingerprint}; the images are "
              f"encrypted with key {key.fingerprint}")
    scheme = _image_scheme(cfg.scheme, cfg.scheme_params, key, args)
    _dataset_from(args, extra.get("dataset") or {})
    ds = _test_split(args, extra.get("dataset") or {})
    _check_geometry(args, tuple(cfg.input_size), ds)
    info = {"mode": cfg.mode, "key_fingerprint": cfg.key_fingerprint, "converted": "keyveil convert",
            "scheme": cfg.scheme, "kind": cfg.kind, "contains_key_material": bool(payload["contains_key_material"])}
    return _evaluate_and_report(args, model.to(args.device), ds, scheme, extra.get("num_classes") or ds.num_classes,
                                info)


def _evaluate_and_report(args: argparse.Namespace, model: Any, ds: ImageDataset, scheme: Scheme | None,
                         num_classes: int, keyed_info: dict[str, Any] | None) -> int:
    data = encrypt_split(ds, scheme, randomness=args.randomness)
    result: EvalResult = evaluate(model.to(args.device), data, num_classes=num_classes, batch_size=args.batch_size,
                                  device=args.device, progress=True)
    fp = scheme.key.fingerprint if scheme is not None and scheme.key is not None else None
    what = "plain images" if scheme is None else (
        f"{scheme.config['scheme']}" + (f" with {'a WRONG random' if args.wrong_key else 'the'} key {fp}" if fp else ""))
    if keyed_info is not None:
        what += (f"; keyed model ({keyed_info['mode']} mode, {keyed_info['converted']}, key "
                 f"{keyed_info['key_fingerprint']})")
    print(f"{args.checkpoint} on {args.dataset}/{args.split} ({result.n} images, {what}):")
    print(f"accuracy {result.accuracy:.4f} ({result.correct}/{result.n})  loss {result.loss:.4f}")
    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".eval.json")
    report = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split,
              "scheme": None if scheme is None else {**scheme.config, "wrong_key": bool(args.wrong_key)},
              "keyed": keyed_info, "classes": list(ds.classes), **result.to_dict()}
    write_atomic(out, json.dumps(report, indent=2) + "\n", overwrite=True)
    print(f"wrote {out} (confusion matrix: rows true class, columns predicted; predictions in image order)")
    return 0
