"""``keyveil keygen``: write a new secret key file."""

from __future__ import annotations

import argparse
import getpass
import sys

from ..keys import Key


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="create a secret key file (mode 0600)")
    p.add_argument("-o", "--output", required=True, help="where to write the key file")
    p.add_argument("--passphrase", action="store_true",
                   help="derive the key from a passphrase typed at the prompt (scrypt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.passphrase:
        phrase = getpass.getpass("passphrase: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        key = Key.from_passphrase(phrase)
    else:
        key = Key.generate()
    path = key.save(args.output)
    print(f"wrote key {key.fingerprint} to {path} (keep it secret: it decrypts your images)")
    return 0
