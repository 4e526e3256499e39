"""What a report would measure, without measuring it: the runs of every section and the summary table's cells.

:class:`PlanningRunner` is a :class:`~.runner.Runner` that records each run's
(section, row label, data set) and runs nothing, so a test can check in a
second that a full report leaves no cell of the summary table "not run".

Examples:
    >>> cells = planned_cells(("membership",))
    >>> cells[("visualmixer-seed", "membership")]
    'planned'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ...keys import InsecureKeyWarning, Key
from .markdown import matrix_scheme, matrix_schemes
from .runner import _RUNNERS, SECTIONS, Runner
from .verdicts import not_measured

__all__ = ["PlanningRunner", "plan_report", "planned_cells"]


class PlanningRunner(Runner):
    """A runner that records the runs a report's sections ask for and runs none (returns ``None``, as for a
    reused row)."""

    def __init__(self, quick: bool = False) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyWarning)
            key = Key.from_seed(0)
        super().__init__(None, key, quick, lambda s: None)
        self.planned: list[tuple[str, str, str]] = []

    def run(self, section: str, scheme_name: str, dataset: str, figure: Callable[[dict[str, float]], str],
            data: str, *, scheme: Any = None, label: str | None = None, **kw: Any) -> None:
        self.planned.append((section, label or scheme_name, dataset))
        return None


def plan_report(sections: tuple[str, ...] = SECTIONS, *, quick: bool = False) -> list[tuple[str, str, str]]:
    """The (section, row label, data set) of every run :func:`~.runner.security_report` would make."""
    r = PlanningRunner(quick)
    for s in sections:
        _RUNNERS[s](r)
    return r.planned


def planned_cells(sections: tuple[str, ...] = SECTIONS, *, quick: bool = False) -> dict[tuple[str, str], str]:
    """(summary-table scheme, section) -> ``"planned"``, or what the cell would say (:func:`not_measured`)."""
    planned = plan_report(sections, quick=quick)
    done = {(matrix_scheme(label), sec) for sec, label, _ in planned}
    return {(s, sec): "planned" if (s, sec) in done else not_measured(sec, s)
            for s in matrix_schemes([label for _, label, _ in planned]) for sec in sections}
