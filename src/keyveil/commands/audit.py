"""``keyveil audit``: utility and every applicable attack on any scheme, a user's own included."""

from __future__ import annotations

import argparse
import sys

from ..experiments.common import Timer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="measure any scheme, yours too: utility and every attack, with intervals",
        description="Audit a scheme: the frontier's utility recipe plus every attack that applies to it as a black "
                    "box, each with its 95 %% interval, trial count and verdict. Writes audit.md, audit.json and "
                    "frontier.png (the scheme among the built-ins).",
        epilog="A factory returns a keyveil Scheme or any object with encrypt(x) (uint8 (B,C,H,W) in and out), "
               "optionally decrypt(y), keyed=True, per_image=True; it may take key=Key and image_size=(H, W). "
               "Example: keyveil audit --scheme my_pkg.obfuscate:make_scheme --quick")
    p.add_argument("--scheme", required=True, metavar="SPEC",
                   help="a registered name (see `keyveil schemes`), 'package.module:factory' or 'file.py:factory'")
    p.add_argument("--quick", action="store_true", help="the quick budget (<= 15 min CPU): 2,000 training images, "
                   "10-epoch recognizers; default: the frontier's recipe")
    p.add_argument("--dataset", help="utility dataset (default fashion-mnist, else mnist5k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="results/audit", help="folder for the card (default results/audit)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..audit import audit

    timer = Timer()
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    card = audit(args.scheme, quick=args.quick, dataset=args.dataset, out_dir=args.output, seed=args.seed, log=log)
    u = card["utility"]
    print(f"audit of {card['scheme']}: accuracy {100 * u['accuracy']:.2f} % vs plain {100 * u['plain_accuracy']:.2f} %"
          f" (drop {u['drop_points']:.2f} points)")
    for r in card["attacks"]:
        shown = f"{r['figure']}  -> {r['verdict']}" if r["applies"] else f"not applicable: {r['reason']}"
        print(f"  {r['attack']:<36} {shown}")
    print(f"wrote {', '.join(card['files'])} ({timer.cpu:.0f} s CPU, {timer.wall:.0f} s wall)")
    return 0
