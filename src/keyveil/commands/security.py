"""``keyveil security-report``: run every attack and write SECURITY.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attacks.report import SECTIONS, security_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "security-report", help="measure every attack against every scheme and write SECURITY.md",
        description="Runs the attack suite (about 15-25 min on 2 CPU cores for all sections) and writes the "
                    "report with every measured figure; pictures go to --pictures.",
    )
    p.add_argument("-o", "--output", help="markdown file to write (e.g. SECURITY.md); default: print it")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--pictures", default="results", help="folder for the PNGs (default results/)")
    p.add_argument("--no-pictures", action="store_true", help="write no PNGs")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke test (not the published figures)")
    p.add_argument("--seed", type=int, default=0, help="seed of the victim key and of training (default 0)")
    p.add_argument("--reuse", metavar="REPORT",
                   help="a previous report (e.g. SECURITY.md): its rows are kept and only the rows it lacks are "
                        "measured (new schemes or attacks); the report says how many rows were reused")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the small training batches run faster on one thread)")
    p.add_argument("--jobs", type=int, default=1,
                   help="run sections in this many processes at once, one per CPU core (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    sections = tuple(args.only) if args.only else SECTIONS
    reuse = None
    if args.reuse:
        from ..attacks.report import parse_report

        try:
            reuse = parse_report(Path(args.reuse).read_text(encoding="utf-8"))
        except OSError as e:
            raise SystemExit(f"keyveil security-report: cannot read --reuse {args.reuse}: {e.strerror}") from e
        if not reuse:
            raise SystemExit(f"keyveil security-report: --reuse {args.reuse} holds no report rows; give a file "
                             "written by `keyveil security-report --output`")
    pictures = None if args.no_pictures else Path(args.pictures)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        md, _ = security_report(sections=sections, pictures=pictures, quick=args.quick, seed=args.seed,
                                log=lambda line: print(line, flush=True), reuse=reuse,
                                jobs=max(1, args.jobs))
    finally:
        torch.set_num_threads(before)
    if args.output:
        Path(args.output).write_text(md, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(md)
    return 0
