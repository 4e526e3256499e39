"""The security report: every attack against every scheme it applies to, measured.

``keyveil security-report`` runs :func:`security_report` and writes SECURITY.md
(tables with the measured figures, the attacker's data, CPU time and the
command that reproduces each section) plus pictures under ``results/``
(git-ignored). The full run takes about 15–25 minutes on 2 CPU cores.

Modules: :mod:`.runner` (which scenario each section runs, and
:func:`security_report`), :mod:`.verdicts` (the thresholds behind "broken" /
"partly" / "holds"), :mod:`.markdown` (rendering SECURITY.md and reading its
rows back) and :mod:`.prose` (the threat model and the sections' text).
"""

from __future__ import annotations

from .markdown import Row, parse_report, render
from .runner import SECTIONS, Runner, save_picture, security_report
from .verdicts import severity, verdict

__all__ = ["SECTIONS", "Row", "Runner", "security_report", "save_picture", "parse_report", "render", "verdict",
           "severity"]
