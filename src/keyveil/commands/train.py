"""``keyveil train``: train a model on a dataset, plain or encrypted on the fly.

Works under ``torchrun`` too (``torchrun --nproc_per_node 2 -m keyveil.cli train ...``):
every process trains on its shard, rank 0 prints and writes the checkpoint.

``--dp`` trains with DP-SGD (Opacus, :mod:`keyveil.engine.dp`): per-sample
clipping to ``--max-grad-norm``, Gaussian noise set by ``--dp-epsilon`` (a
target ε after all epochs) or ``--noise-multiplier``, Poisson sampling, and
the spent ε at ``--dp-delta`` printed per epoch, stored in the checkpoint's
``privacy`` entry and in the ``--json`` report.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..atomic import write_atomic
from ..data import create_dataset
from ..engine import OPTIMIZERS, build_model, fit, is_main_process, seed_everything
from ..engine.dp import PrivacyConfig, PrivacyConfigError, fit_private
from ._common import (
    add_data_args,
    add_scheme_args,
    build_scheme,
    dataset_options,
    encrypt_split,
    scheme_meta,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on plain or encrypted images")
    add_data_args(p)
    add_scheme_args(p)
    p.add_argument("--model", default="smallcnn", metavar="ARCH",
                   help="smallcnn (default), vit_mini, or a torchvision classifier name, e.g. resnet18, "
                   "mobilenet_v3_small, shufflenet_v2_x0_5, vgg11_bn, swin_t (random weights, adapted to small "
                   "images: keyveil.engine.torchvision_model)")
    p.add_argument("--weights", metavar="PATH", help="start from these weights: a state_dict file saved with "
                   "torch.save(model.state_dict(), PATH) for the same --model and data geometry")
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
    p.add_argument("--json", metavar="PATH", help="also write a JSON report of the run (history, final metrics, "
                   "privacy spent with --dp)")
    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="detection: train an FCOS detector (--model fcos-small) on a detection dataset such as "
                   "fashion-canvas or coco (keyveil.commands._detection)")
    add_dp_args(p)
    p.set_defaults(func=run)


DP_OPTIONS = ("dp_epsilon", "dp_delta", "max_grad_norm", "noise_multiplier", "dp_accountant")


def add_dp_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("differential privacy (DP-SGD with Opacus: pip install 'keyveil[privacy]')")
    g.add_argument("--dp", action="store_true", help="train with DP-SGD: per-sample clipping, Gaussian noise, "
                   "Poisson sampling (BatchNorm becomes GroupNorm); not with --resume or torchrun")
    g.add_argument("--dp-epsilon", type=float, metavar="EPS", help="target epsilon after --epochs epochs "
                   "(Opacus picks the noise); or give --noise-multiplier")
    g.add_argument("--noise-multiplier", type=float, metavar="SIGMA",
                   help="noise std / clipping norm, instead of --dp-epsilon (epsilon is then measured)")
    g.add_argument("--dp-delta", type=float, metavar="DELTA",
                   help="delta (default min(1e-5, 1/(10 N)) for N training images)")
    g.add_argument("--max-grad-norm", type=float, metavar="C", help="per-sample gradient clipping norm (default 1.0)")
    g.add_argument("--dp-accountant", choices=("rdp", "prv", "gdp"),
                   help="privacy accountant (default rdp; prv is tighter but slower)")


def privacy_config(args: argparse.Namespace) -> PrivacyConfig | None:
    """The DP-SGD options as a validated :class:`PrivacyConfig` (``None`` without ``--dp``)."""
    given = [f"--{n.replace('_', '-')}" for n in DP_OPTIONS if getattr(args, n, None) is not None]
    if not getattr(args, "dp", False):
        if given:
            raise ValueError(f"{', '.join(given)} only apply to DP-SGD training: add --dp (or drop them)")
        return None
    problems = []
    if args.resume:
        problems.append("--dp cannot --resume (the privacy accountant is not checkpointed): train from scratch")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        problems.append("--dp does not support torchrun/DDP yet: run a single process")
    cfg = PrivacyConfig(target_epsilon=args.dp_epsilon, noise_multiplier=args.noise_multiplier,
                        delta=args.dp_delta, max_grad_norm=1.0 if args.max_grad_norm is None else args.max_grad_norm,
                        accountant=args.dp_accountant or "rdp")
    names = {"epsilon must": "--dp-epsilon must", "noise multiplier must": "--noise-multiplier must",
             "delta must": "--dp-delta must", "max grad norm must": "--max-grad-norm must",
             "a target epsilon or a noise multiplier, not both": "--dp-epsilon or --noise-multiplier, not both",
             "a target epsilon (e.g. 8) or a noise multiplier (e.g. 1.0)":
             "--dp-epsilon EPS (e.g. 8) or --noise-multiplier SIGMA (e.g. 1.0)"}
    for problem in cfg.problems():
        for old, new in names.items():
            problem = problem.replace(old, new)
        problems.append(problem)
    if problems:
        raise PrivacyConfigError("bad DP-SGD options: " + "; ".join(problems))
    return cfg


def _say(*a: Any) -> None:
    if is_main_process():
        print(*a, flush=True)


def run(args: argparse.Namespace) -> int:
    from ._detection import is_detection_source, train_detection

    if getattr(args, "task", "classification") == "detection":
        return train_detection(args)
    if is_detection_source(args.dataset):
        raise ValueError(f"{args.dataset!r} is a detection dataset (boxes, not class labels): add --task detection")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        raise ValueError("--workers must be 0 or more")
    privacy = privacy_config(args)
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
    model = build_model(args.model, **{**meta["model_kwargs"], "image_size": tuple(train.size)}, weights=args.weights)
    if args.weights:
        meta["init_weights"] = str(args.weights)
    enc_train = encrypt_split(train, scheme, randomness=args.randomness)
    enc_test = encrypt_split(test, scheme, randomness=args.randomness)
    what = "plain images" if meta["scheme"] is None else (
        f"{meta['scheme']['scheme']} ({meta['scheme']['applied']}, key {meta['scheme']['key_fingerprint']})")
    _say(f"training {args.model} on {args.dataset} ({len(train)} train / {len(test)} test images, "
         f"{train.channels}x{train.size[0]}x{train.size[1]}) with {what}, {args.optimizer}, {args.epochs} epochs"
         + (_dp_line(privacy) if privacy is not None else ""))

    def show(r: dict[str, Any]) -> None:
        eps = f"  eps {r['epsilon']:.3f} (delta {r['delta']:.1e})" if "epsilon" in r else ""
        _say(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f}  "
             f"test loss {r.get('test_loss', float('nan')):.4f} acc {r.get('test_accuracy', float('nan')):.4f}  "
             f"({r['images_per_s']:.0f} img/s, {r['seconds']:.1f} s){eps}")

    common: dict[str, Any] = {"test_set": enc_test, "epochs": args.epochs, "batch_size": args.batch_size,
                              "optimizer": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay,
                              "schedule": args.schedule, "num_workers": args.workers, "device": args.device,
                              "checkpoint": output, "meta": meta, "progress": not args.quiet, "on_epoch": show}
    if privacy is not None:
        result = fit_private(model, enc_train, privacy=privacy, **common)
        report_privacy: dict[str, Any] | None = result.privacy
    else:
        result = fit(model, enc_train, seed=args.seed, resume=args.resume, **common)
        report_privacy = None
    if result.history:
        last = result.history[-1]
        eps = (f", epsilon {report_privacy['epsilon']:.3f} at delta {report_privacy['delta']:.1e}"
               if report_privacy else "")
        _say(f"wrote {output} (epoch {result.epoch}, test accuracy "
             f"{last.get('test_accuracy', float('nan')):.4f}{eps})")
        if args.json and is_main_process():
            report = {"checkpoint": str(output), "epoch": result.epoch, "metrics": last, "history": result.history,
                      **{k: meta[k] for k in ("arch", "dataset", "scheme")}, "privacy": report_privacy}
            write_atomic(args.json, json.dumps(report, indent=2) + "\n", overwrite=True)
    return 0


def _dp_line(cfg: PrivacyConfig) -> str:
    budget = (f"target epsilon {cfg.target_epsilon:g}" if cfg.target_epsilon is not None
              else f"noise multiplier {cfg.noise_multiplier:g}")
    return f", DP-SGD ({budget}, max grad norm {cfg.max_grad_norm:g}, {cfg.accountant} accountant)"
