"""``keyveil attack``: run one attack against one scheme on an offline dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attacks import list_attacks
from ..attacks._data import DATASETS
from ..attacks.report import save_picture
from ..attacks.scenarios import SCENARIOS, make_scheme, plain_baseline, run_scenario
from ..keys import Key
from ..schemes import list_schemes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack", help="attack a scheme and measure what it leaks",
        description="Run an attack against a scheme on an offline dataset, print the measured figures and "
                    "write a PNG of originals / encrypted / recovered. Keyed schemes need the victim's key "
                    "to make the ciphertexts and to score (the attack itself never reads it).",
    )
    p.add_argument("--attack", required=True, choices=list(SCENARIOS), help=f"one of {', '.join(list_attacks())}")
    p.add_argument("--scheme", required=True, help=f"plain or a scheme: {', '.join(list_schemes())}")
    p.add_argument("--key", help="victim's key file (default: a fresh random key)")
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--n", type=int, default=None,
                   help="attacker's data: pairs / ciphertexts / training images (default per attack)")
    p.add_argument("--test-n", type=int, default=100, help="victim images to recover and score (default 100)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (learned-inversion, membership)")
    p.add_argument("--seed", type=int, default=0, help="seed of per-image randomness and training")
    p.add_argument("-o", "--output", default="results/attack.png", help="PNG to write (default results/attack.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key = Key.load(args.key) if args.key else Key.generate()
    scheme = plain_baseline() if args.scheme == "plain" else make_scheme(args.scheme, args.dataset, key)
    options = {} if args.epochs is None else {"epochs": args.epochs}
    sc = run_scenario(args.attack, scheme, args.dataset, n=args.n, test_n=args.test_n, seed=args.seed,
                      options=options)
    r = sc.result
    print(f"attack {args.attack} against {args.scheme} (key {key.fingerprint}) on {args.dataset}")
    for name, value in r.metrics.items():
        print(f"  {name:30s} {value:.4f}" if isinstance(value, float) else f"  {name:30s} {value}")
    print(f"  cost: {r.cost.describe()} ({r.cost.wall_seconds:.2f} s wall)")
    path = save_picture(sc, Path(args.output))
    print(f"wrote {path} (rows: originals / encrypted" + (" / recovered)" if sc.recovered is not None else ")"))
    return 0
