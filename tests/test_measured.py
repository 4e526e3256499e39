"""The measured figures quoted in code match the committed results they were copied from.

``keyveil.schemes.measured`` (printed by ``keyveil schemes``, quoted by
VisualMixer's PrivacyWarning) and VisualMixer's docstring quote figures of
``results/frontier/frontier.json`` (``keyveil experiment frontier``) and of
SECURITY.md (``keyveil security-report``). Re-running those commands and
committing new results without updating the quotes fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from keyveil.attacks.report import parse_report
from keyveil.schemes import measured
from keyveil.schemes.visualmixer import VisualMixer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frontier() -> dict[str, dict]:
    rows = json.loads((ROOT / measured.FRONTIER_FILE).read_text())["rows"]
    return {r["label"]: r for r in rows}


@pytest.fixture(scope="module")
def security() -> dict[tuple[str, str], str]:
    rows = parse_report((ROOT / measured.SECURITY_FILE).read_text())
    return {(r.section, r.scheme): r.figure for r in rows}


def _points() -> list[measured.FrontierPoint]:
    return [measured.FRONTIER_PLAIN, *measured.FRONTIER_VISUALMIXER.values()]


@pytest.mark.parametrize("point", _points(), ids=lambda p: p.label)
def test_frontier_points_match_the_frontier_json(frontier, point):
    row = frontier[point.label]
    assert point.glance == pytest.approx(100 * row["reid"]["glance"])
    assert point.adapted == (None if "adapted" not in row["reid"] else pytest.approx(100 * row["reid"]["adapted"]))
    assert point.accuracy == pytest.approx(100 * row["accuracy"])
    assert point.drop_points == round(row["drop_points"], 2)


def test_every_scheme_with_a_quote_names_its_source_row(security):
    assert set(measured.DEFAULT_REIDENTIFICATION) == set(measured.REIDENTIFICATION_SOURCE)
    for section, row in measured.REIDENTIFICATION_SOURCE.values():
        assert (section, row) in security, f"SECURITY.md has no {section} row {row!r}"


@pytest.mark.parametrize("scheme", sorted(measured.DEFAULT_REIDENTIFICATION))
def test_quoted_reidentification_figures_are_in_security_md(security, scheme):
    figure = security[measured.REIDENTIFICATION_SOURCE[scheme]]
    plain = security[("reidentify", "plain")]
    quoted = re.findall(r"(\d+\.\d) %", measured.DEFAULT_REIDENTIFICATION[scheme])
    assert quoted, "a quote without a figure"
    assert quoted[0] in re.findall(r"(\d+\.\d) %", figure), "the headline figure must be the row's"
    for value in quoted:
        assert f"{value} %" in figure or f"{value} %" in plain, f"{value} % is in neither row"


def test_visualmixer_docstring_quotes_the_frontier_and_security_md(security):
    doc = VisualMixer.__doc__
    notes = doc[doc.index("What the default buys"):doc.index("So **no")]
    allowed = {"2.5"}  # chance, 1 of 40 people
    for p in _points():
        for v in (p.glance, p.adapted, p.accuracy, p.drop_points):
            if v is not None:
                allowed |= {f"{v:.1f}", f"{v:.2f}"}
    allowed |= set(re.findall(r"(\d+\.\d) %", security[("reidentify", "visualmixer")]))
    quoted = re.findall(r"\d+\.\d+", notes)
    assert len(quoted) >= 10
    assert [q for q in quoted if q not in allowed] == []
