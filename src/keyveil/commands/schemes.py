"""``keyveil schemes``: the table of registered schemes."""

from __future__ import annotations

import argparse
import math

from ..keys import Key
from ..schemes import create, describe, list_schemes
from ..schemes.measured import DEFAULT_REIDENTIFICATION, VISUALMIXER_TRADEOFF


def _bits(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:,.0f}"


def schemes_table() -> list[list[str]]:
    """Rows: name, what it does, invertible, per-image, key bits at 32×32 and 224×224, measured re-identification."""
    key = Key(bytes(32))  # a throw-away key: only geometry matters here
    rows = []
    for name in list_schemes():
        s = create(name, key)
        rows.append([
            name,
            describe(name),
            "yes" if s.invertible else "no",
            "yes" if s.per_image else "no",
            _bits(s.key_space_bits((3, 32, 32))),
            _bits(s.key_space_bits((3, 224, 224))),
            DEFAULT_REIDENTIFICATION.get(name, "not measured"),
        ])
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


HEADER = ["name", "what it does", "invertible", "per-image", "key bits 32x32", "key bits 224x224",
          "faces re-identified (defaults, worst attacker)"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schemes", help="list the scrambling schemes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(format_table(HEADER, schemes_table()))
    print("\ninvertible with a key: 'patch' given the nonces; key bits for per-image schemes count "
          "one image's randomness")
    print("a+b: a registered chain ('compose'): a, then b, each step with its own key derived from the one key; "
          "invertible only if every step is; key bits are the sum of the steps'. Chain any schemes with "
          "schemes.create('compose', key, steps=['visualmixer', 'pixel']) or schemes.chain(a, b).")
    print("re-identified: top-1 rate at which AT&T faces encrypted with the defaults were recognized by the worst "
          "attacker variant (chance 2.5 %; SECURITY.md, 'reidentify'); for keyed schemes the worst attacker holds "
          "an encryption oracle, the figure without one is in brackets. Accuracy cost: RESULTS.md.")
    print(VISUALMIXER_TRADEOFF)
    print("noise and instahide are the obfuscations VisualMixer compares against, not ciphers: instahide's float "
          "encodings lie in [-1, 1] (uint8: 128 is 0) and fall to Carlini et al.'s attack once a server sees each "
          "image in several encodings, as training epochs show it (SECURITY.md, 'instahide'); train on them with "
          "scheme.encrypt_with_labels(images, one_hot_labels).")
    return 0
