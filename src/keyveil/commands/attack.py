"""``keyveil attack``: run one attack against one scheme on an offline dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attacks._data import DEPRECATED_NAMES, attack_datasets, dataset_name
from ..attacks.report import save_picture
from ..attacks.scenarios import SCENARIOS, make_scheme, plain_baseline, run_scenario
from ..keys import Key
from ..schemes import list_schemes

_NAMES = SCENARIOS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack", help="attack a scheme and measure what it leaks",
        description="Run an attack against a scheme on an offline dataset, print the measured figures and "
                    "write a PNG of originals / encrypted / recovered. Keyed schemes need the victim's key "
                    "to make the ciphertexts and to score (the attack itself never reads it). "
                    "'keyveil attack reidentify --scheme S' asks whether people in AT&T face photos encrypted "
                    "with S can still be recognized (top-1/top-5 per attacker variant, chance 2.5 %).",
    )
    p.add_argument("name", nargs="?", choices=_NAMES, metavar="ATTACK", help=f"one of {', '.join(_NAMES)}")
    p.add_argument("--attack", choices=_NAMES, help="the same as the positional ATTACK")
    p.add_argument("--scheme", required=True, help=f"plain or a scheme: {', '.join(list_schemes())}")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="scheme option (repeatable), e.g. --option window=56 (reidentify only)")
    p.add_argument("--key", help="victim's key file (default: a fresh random key)")
    p.add_argument("--dataset", default="fashion-mnist", metavar="NAME",
                   help=f"a dataset `keyveil datasets` lists: {', '.join(attack_datasets())} (default fashion-mnist; "
                        f"the old names {', '.join(DEPRECATED_NAMES)} still work, with a warning)")
    p.add_argument("--n", type=int, default=None,
                   help="attacker's data: pairs / ciphertexts / training images (default per attack)")
    p.add_argument("--test-n", type=int, default=100, help="victim images to recover and score (default 100)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (learned-inversion, membership)")
    p.add_argument("--variants", nargs="+", help="reidentify: glance adapted inverted key-recovery (default all)")
    p.add_argument("--recognizers", nargs="+", help="reidentify: eigenfaces cnn (default both)")
    p.add_argument("--seed", type=int, default=0, help="seed of per-image randomness and training")
    p.add_argument("-o", "--output", default="results/attack.png", help="PNG to write (default results/attack.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name and args.attack and args.name != args.attack:
        raise ValueError(f"two attacks given ({args.name!r} and --attack {args.attack!r}); give one")
    attack = args.name or args.attack
    if attack is None:
        raise ValueError(f"name the attack: keyveil attack ATTACK --scheme S, with ATTACK one of {', '.join(_NAMES)}")
    args.dataset = dataset_name(args.dataset)  # a registry name; the old ones warn
    key = Key.load(args.key) if args.key else Key.generate()
    if attack == "reidentify":
        return _reidentify(args, key)
    if args.option or args.variants or args.recognizers:
        raise ValueError("--option, --variants and --recognizers apply to 'keyveil attack reidentify' only")
    scheme = plain_baseline() if args.scheme == "plain" else make_scheme(args.scheme, args.dataset, key)
    options = {} if args.epochs is None else {"epochs": args.epochs}
    sc = run_scenario(attack, scheme, args.dataset, n=args.n, test_n=args.test_n, seed=args.seed,
                      options=options)
    r = sc.result
    print(f"attack {attack} against {args.scheme} (key {key.fingerprint}) on {args.dataset}")
    for name, value in r.metrics.items():
        print(f"  {name:30s} {value:.4f}" if isinstance(value, float) else f"  {name:30s} {value}")
    print(f"  cost: {r.cost.describe()} ({r.cost.wall_seconds:.2f} s wall)")
    path = save_picture(sc, Path(args.output))
    print(f"wrote {path} (rows: originals / encrypted" + (" / recovered)" if sc.recovered is not None else ")"))
    return 0


def _reidentify(args: argparse.Namespace, key: Key) -> int:
    import torch.nn.functional as F

    from ..attacks.reidentify import RECOGNIZERS, VARIANTS, Reidentify, encryption_randomness, face_split
    from ..pictures import save_grid
    from ..schemes import create, scheme_class
    from ._common import parse_options

    options = parse_options(args.option)
    if args.scheme == "plain":
        if options:
            raise ValueError("--option needs a scheme; 'plain' has none")
        scheme = None
    else:
        if args.scheme not in list_schemes():
            raise ValueError(f"unknown scheme {args.scheme!r}; choose plain or one of {', '.join(list_schemes())}")
        try:
            scheme = create(args.scheme, key if scheme_class(args.scheme).needs_key else None, **options)
        except TypeError as exc:
            raise ValueError(f"bad --option for scheme {args.scheme!r}: {exc}") from None
    attack = Reidentify(variants=args.variants or VARIANTS, recognizers=args.recognizers or RECOGNIZERS,
                        seed=args.seed)
    g, gl, p, pl = face_split()
    r = attack.run(gallery=g, gallery_labels=gl, probes=p, probe_labels=pl, scheme=scheme)
    where = "" if scheme is None or scheme.key is None else f" (key {key.fingerprint})"
    print(f"re-identification of {len(p)} AT&T face photos encrypted with {args.scheme}{where}: "
          f"{len(g)} plain gallery photos of {int(gl.max()) + 1} people; chance {100 * r.metrics['chance']:.1f} %")
    if scheme is not None:
        print(f"  scheme options: {scheme.config['params']}")
    print(f"  {'variant':14s} {'recognizer':12s} {'top-1':>7s} {'top-5':>7s}  best view")
    for name, value in r.metrics.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[2] == "top1":
            top5 = r.metrics[f"{parts[0]}/{parts[1]}/top5"]
            view = r.details["best_view"][f"{parts[0]}/{parts[1]}"]
            print(f"  {parts[0]:14s} {parts[1]:12s} {100 * value:6.1f}% {100 * top5:6.1f}%  {view}")
    for variant, why in r.details["not_applicable"].items():
        print(f"  {variant:14s} not applicable: {why}")
    print(f"  worst case: top-1 {100 * r.metrics['worst_top1']:.1f} %, top-5 {100 * r.metrics['worst_top5']:.1f} %")
    print(f"  cost: {r.cost.describe()} ({r.cost.wall_seconds:.1f} s wall)")
    k = 6
    ph, pw = r.details["padding"]
    shown = F.pad(p[:: len(p) // k][:k], (0, pw, 0, ph))
    rows = [shown, shown if scheme is None else scheme.encrypt(shown, **encryption_randomness(scheme, args.seed))]
    labels = ["original", f"encrypted ({args.scheme})"]
    if r.reconstructions is not None:
        rows.append(F.pad(r.reconstructions[:: len(p) // k][:k], (0, pw, 0, ph)))
        labels.append("inverted (U-Net)")
    path = save_grid(rows, Path(args.output), row_labels=labels,
                     col_labels=[f"person {int(i) + 1}" for i in pl[:: len(p) // k][:k]],
                     title=f"re-identification: {args.scheme}, worst top-1 {100 * r.metrics['worst_top1']:.1f} %")
    print(f"wrote {path}")
    return 0
