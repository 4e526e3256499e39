"""Reproductions of the seeds' result tables on the real datasets available offline.

* :func:`run_privdl` — PrivDL's Table 1 (plain, pre-trained, fine-tuned, keyed with and without the key).
* :func:`run_schemes` — accuracy of the same recipe on every scheme, and the drop vs plain.
* :func:`run_frontier` — every scheme's strength knob, measured for accuracy and re-identification.
"""

from __future__ import annotations

from .common import PaddedDataset, Timer, markdown_table, predict, save_grid, write_report
from .frontier import POINTS, Point, pareto_front, run_frontier
from .privdl import run_privdl
from .schemes import PAPER_DROP, SCHEMES, run_schemes

__all__ = ["run_privdl", "run_schemes", "run_frontier", "POINTS", "Point", "pareto_front", "SCHEMES", "PAPER_DROP", "PaddedDataset", "predict", "save_grid",
           "markdown_table", "write_report", "Timer"]
