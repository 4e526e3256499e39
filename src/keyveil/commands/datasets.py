"""``keyveil datasets``: the registered datasets and whether they are available here."""

from __future__ import annotations

import argparse

from ..data import dataset_source, list_datasets
from .schemes import format_table

HEADER = ["name", "classes", "shape", "splits", "available", "what it is"]


def datasets_table(data_dir: str | None = None) -> tuple[list[list[str]], list[str]]:
    """Rows (name, classes, shape, splits, available, description) and one note per dataset:
    where its files are, or how to get them."""
    rows, notes = [], []
    for name in list_datasets():
        src = dataset_source(name, data_dir)
        avail = src.available()
        shape = f"{src.channels}x{src.size[0]}x{src.size[1]}" if src.size else "any"
        rows.append([name, str(src.num_classes or "any"), shape, "/".join(src.splits), "yes" if avail else "no",
                     src.description])
        notes.append(f"{name}: {'found at ' if avail else 'NOT AVAILABLE: '}{avail.reason}")
    return rows, notes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list the datasets and say which are available here")
    p.add_argument("--data-dir", help="folder where cifar10 / imagefolder / a Fashion-MNIST copy live")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows, notes = datasets_table(args.data_dir)
    print(format_table(HEADER, rows))
    print()
    print("\n".join(notes))
    return 0
