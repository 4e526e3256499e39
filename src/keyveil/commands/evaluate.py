"""``keyveil evaluate``: accuracy, loss and confusion matrix of a checkpoint on a dataset.

By default the test split is encrypted the way the checkpoint was trained
(its scheme and options; pass the same ``--key``). ``--wrong-key`` encrypts
with a fresh random key instead, ``--plain`` not at all, and ``--scheme``
picks another scheme.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import create_dataset
from ..engine import evaluate, load_checkpoint, model_from_checkpoint
from ..schemes import scheme_class
from .train import add_data_args, build_scheme, dataset_options, encrypt_split


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test a checkpoint: accuracy, loss, confusion matrix (JSON)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `keyveil train`")
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
                   help="detectors: convert the plain detector with --key and run it on --scheme pixel images")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--output", help="JSON report (default: CHECKPOINT with .eval.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state = load_checkpoint(args.checkpoint)
    if state.get("task") == "detection":
        from ._detection import evaluate_detection

        return evaluate_detection(args, state)
    trained = state.get("dataset", {})
    args.dataset = args.dataset or trained.get("name")
    if args.dataset is None:
        raise ValueError("the checkpoint does not name its dataset; pass --dataset")
    if args.data_dir is None and args.dataset == trained.get("name"):
        args.data_dir = trained.get("data_dir")
    ck_scheme = state.get("scheme")
    if args.plain:
        scheme = None
    elif args.scheme or (ck_scheme and ck_scheme.get("applied") == "on the fly"):
        name = args.scheme or ck_scheme["scheme"]
        options = args.option if (args.scheme or args.option) else dict(ck_scheme.get("params", {}))
        needs = scheme_class(name).needs_key
        if needs and not args.key and not args.wrong_key:
            raise ValueError(f"the images must be encrypted with {name!r} (the checkpoint was trained on it, key "
                             f"{(ck_scheme or {}).get('key_fingerprint')}): pass --key KEYFILE, or --wrong-key / "
                             "--plain to test without it")
        scheme = build_scheme(name, args.key, options, wrong_key=args.wrong_key)
    else:
        scheme = None
    opts = dataset_options(args) or dict(trained.get("options") or {})
    ds = create_dataset(args.dataset, args.split, data_dir=args.data_dir, **opts).limit(args.test_limit)
    data = encrypt_split(ds, scheme, randomness=args.randomness)
    model = model_from_checkpoint(state).to(args.device)
    result = evaluate(model, data, num_classes=state["model_kwargs"]["num_classes"], batch_size=args.batch_size,
                      device=args.device, progress=True)
    fp = scheme.key.fingerprint if scheme is not None and scheme.key is not None else None
    if ck_scheme and fp and ck_scheme.get("key_fingerprint") not in (None, fp) and not args.wrong_key:
        print(f"note: evaluating with key {fp}, the checkpoint was trained with key {ck_scheme['key_fingerprint']}")
    what = "plain images" if scheme is None else (
        f"{scheme.config['scheme']}" + (f" with {'a WRONG random' if args.wrong_key else 'the'} key {fp}" if fp else ""))
    print(f"{args.checkpoint} on {args.dataset}/{args.split} ({result.n} images, {what}):")
    print(f"accuracy {result.accuracy:.4f} ({result.correct}/{result.n})  loss {result.loss:.4f}")
    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".eval.json")
    report = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split,
              "scheme": None if scheme is None else {**scheme.config, "wrong_key": bool(args.wrong_key)},
              "classes": list(ds.classes), **result.to_dict()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} (confusion matrix: rows true class, columns predicted)")
    return 0
