"""``keyveil train --task detection`` and ``keyveil evaluate`` of a detector checkpoint.

Detection datasets (``fashion-canvas``, ``coco``) yield boxes and labels;
the detector is :func:`keyveil.engine.detection.build_detector`'s FCOS. The
checkpoint records ``task: "detection"``, so ``keyveil evaluate`` knows what
it holds. ``evaluate --keyed MODE --scheme pixel --key K`` converts a detector
trained on plain images with the key and runs it on encrypted images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from ..data import create_dataset, dataset_source
from ..data.detection import EncryptedDetection, is_detection_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import is_main_process, save_checkpoint, seed_everything
from ..keys import Key
from ..schemes import scheme_class
from ..schemes.pixel import PixelShuffle
from ._common import build_scheme, dataset_options, scheme_meta

__all__ = ["is_detection_source", "train_detection", "evaluate_detection", "DETECTION_DEFAULT_MODEL"]

#: What ``--model`` means for detection when left at the classifier default.
DETECTION_DEFAULT_MODEL = "fcos-small"


def is_detection_source(name: str | None) -> bool:
    """Whether the registered dataset ``name`` is a detection dataset."""
    return name is not None and getattr(type(dataset_source(name)), "task", None) == "detection"


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return dataset_options(args, datasets=("coco",))


def _load(args: argparse.Namespace, split: str, limit: int | None, opts: dict[str, Any]):
    if not is_detection_source(args.dataset):
        raise ValueError(f"--task detection needs a detection dataset (fashion-canvas, coco); {args.dataset!r} "
                         "holds class labels, not boxes")
    ds = create_dataset(args.dataset, split, data_dir=args.data_dir, **opts)
    return ds.limit(limit)


def _encrypted(ds, scheme, randomness: str):
    if scheme is None:
        return ds
    return EncryptedDetection(ds, scheme, randomness=randomness,
                              nonce_offset=TEST_NONCE_OFFSET if ds.split != "train" else 0)


def train_detection(args: argparse.Namespace) -> int:
    """``keyveil train --task detection``: train an FCOS, write a checkpoint (and ``--json``)."""
    from ..engine.detection import DETECTORS, build_detector, fit_detector

    arch = DETECTION_DEFAULT_MODEL if args.model == "smallcnn" else args.model
    if arch not in DETECTORS:
        raise ValueError(f"--model {args.model!r} is not a detector; --task detection knows {', '.join(DETECTORS)}")
    if getattr(args, "dp", False):
        raise ValueError("--dp is for classifiers; DP-SGD detection training is not supported")
    if getattr(args, "resume", None):
        raise ValueError("--resume is not supported with --task detection yet: train from scratch")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    opts = _options(args)
    train = _load(args, "train", args.limit, opts)
    test_split = "test" if "test" in dataset_source(args.dataset).splits and args.dataset != "coco" else "val"
    test = _load(args, test_split, args.test_limit, opts)
    scheme = build_scheme(args.scheme, args.key, args.option)
    seed_everything(args.seed)
    kwargs = {"num_classes": train.num_classes, "in_channels": train.channels}
    model = build_detector(arch, **kwargs)
    what = "plain images" if scheme is None else f"{scheme.config['scheme']} (key {scheme.config['key_fingerprint']})"
    _say(f"training {arch} on {args.dataset} ({len(train)} train / {len(test)} {test_split} images) with {what}, "
         f"{args.epochs} epochs")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def show(r: dict[str, Any]) -> None:
        extra = (f"  test mAP {r['test_map']:.4f} mAP@.5 {r['test_map_50']:.4f} P {r['test_precision']:.3f} "
                 f"R {r['test_recall']:.3f}") if "test_map" in r else ""
        _say(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} ({r['images_per_s']:.0f} img/s, "
             f"{r['seconds']:.1f} s){extra}")

    result = fit_detector(model, _encrypted(train, scheme, args.randomness), epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr or 2e-3, weight_decay=args.weight_decay or 1e-4,
                          seed=args.seed, device=device, test_set=_encrypted(test, scheme, "nonce"),
                          progress=not args.quiet, on_epoch=show)
    output = args.output or "detector.pt"
    last = result.history[-1]
    state = {"task": "detection", "arch": arch, "model_kwargs": kwargs,
             "dataset": {**train.info, "data_dir": args.data_dir, "options": opts, "limit": args.limit},
             "scheme": scheme_meta(scheme, args.randomness), "epoch": args.epochs, "history": result.history,
             "metrics": last, "model_state": {k: v.cpu() for k, v in model.state_dict().items()}}
    if is_main_process():
        save_checkpoint(output, state)
        _say(f"wrote {output} (test mAP@[.5:.95] {last['test_map']:.4f}, mAP@.5 {last['test_map_50']:.4f})")
        if args.json:
            write_atomic(args.json, json.dumps({"checkpoint": str(output), "task": "detection", "arch": arch,
                                                "metrics": last, "history": result.history,
                                                "dataset": state["dataset"], "scheme": state["scheme"]},
                                               indent=2) + "\n", overwrite=True)
    return 0


def evaluate_detection(args: argparse.Namespace, state: dict[str, Any]) -> int:
    """``keyveil evaluate`` of a detector: mAP, mAP@.5, precision, recall as JSON."""
    from ..engine.detection import detection_metrics, detector_from_checkpoint, predict_detections
    from ..models.keyed_detection import keyed_detector

    trained = state.get("dataset", {})
    args.dataset = args.dataset or trained.get("name")
    if args.data_dir is None and args.dataset == trained.get("name"):
        args.data_dir = trained.get("data_dir")
    ck_scheme = state.get("scheme")
    keyed_mode = getattr(args, "keyed", None)
    if args.plain:
        scheme = None
    elif args.scheme or keyed_mode or ck_scheme:
        name = args.scheme or ("pixel" if keyed_mode and not ck_scheme else ck_scheme["scheme"])
        options = args.option if (args.scheme or args.option or not ck_scheme) else dict(ck_scheme.get("params", {}))
        if not args.key and not args.wrong_key and scheme_class(name).needs_key:
            raise ValueError(f"the images must be encrypted with {name!r}: pass --key KEYFILE, or --wrong-key / "
                             "--plain to test without it")
        scheme = build_scheme(name, args.key, options, wrong_key=args.wrong_key)
    else:
        scheme = None
    opts = dict(trained.get("options") or {}) if args.dataset == trained.get("name") else {}
    if getattr(args, "image_size", None):
        opts["image_size"] = tuple(args.image_size)
    split = args.split
    ds = _load(args, split, args.test_limit, opts)
    data = _encrypted(ds, scheme, args.randomness)
    model = detector_from_checkpoint(state).to(args.device)
    if keyed_mode:
        if not args.key or not isinstance(scheme, PixelShuffle):
            raise ValueError("--keyed converts the detector with the key: pass --scheme pixel (or pixel-np) and "
                             "--key KEYFILE (with --wrong-key the images get a random key instead)")
        key = Key.load(args.key)
        model = keyed_detector(model, key, scheme=type(scheme)(key, **scheme.params_dict()), mode=keyed_mode,
                               input_size=(ds.channels, *ds.size))
    metrics = detection_metrics(predict_detections(model, data, batch_size=args.batch_size, device=args.device), data)
    fp = scheme.key.fingerprint if scheme is not None and scheme.key is not None else None
    what = "plain images" if scheme is None else (
        f"{scheme.config['scheme']}" + (f" with {'a WRONG random' if args.wrong_key else 'the'} key {fp}" if fp else ""))
    how = f", keyed detector ({keyed_mode} mode)" if keyed_mode else ""
    print(f"{args.checkpoint} on {args.dataset}/{split} ({metrics['images']} images, {metrics['objects']} objects, "
          f"{what}{how}):")
    print(f"mAP@[.5:.95] {metrics['map']:.4f}  mAP@.5 {metrics['map_50']:.4f}  precision {metrics['precision']:.4f}  "
          f"recall {metrics['recall']:.4f}  (P/R at score >= 0.5, IoU >= 0.5)")
    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".eval.json")
    report = {"checkpoint": str(args.checkpoint), "task": "detection", "dataset": args.dataset, "split": split,
              "scheme": None if scheme is None else {**scheme.config, "wrong_key": bool(args.wrong_key)},
              "keyed": keyed_mode, "categories": list(ds.categories), **metrics}
    write_atomic(out, json.dumps(report, indent=2) + "\n", overwrite=True)
    print(f"wrote {out}")
    return 0


def _say(*a: Any) -> None:
    if is_main_process():
        print(*a, flush=True)


def check_classification_dataset(ds) -> None:
    """Refuse a detection dataset in the classification path, saying what to add."""
    if is_detection_dataset(ds):
        raise ValueError(f"{ds.name!r} is a detection dataset (boxes, not class labels): add --task detection")
