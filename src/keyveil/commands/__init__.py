"""One module per ``keyveil`` sub-command; each defines ``register(subparsers)``.

A module's ``register`` adds its parser and sets ``func`` (``args -> exit code``)
with ``parser.set_defaults(func=...)``. :mod:`keyveil.cli` discovers them.
"""

from __future__ import annotations

import argparse
import shutil


class OneLineHelpFormatter(argparse.HelpFormatter):
    """Help text with every sub-command (or experiment) on one line: name, then its help.

    The help column starts after the longest name (``security-report``, indented) and the text is at
    least 100 columns wide, so a one-line help of up to 78 characters is never wrapped.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=22, width=max(100, shutil.get_terminal_size().columns))
        self._action_max_length = 20  # argparse measures sub-commands 2 columns short of their indent
