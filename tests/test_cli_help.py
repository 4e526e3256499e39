"""`keyveil --help` lists every sub-command, and `keyveil experiment --help` every experiment, one line each."""

from __future__ import annotations

import argparse
import re

import pytest

from keyveil.cli import build_parser


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _assert_one_line_each(text: str, names: list[str]) -> None:
    lines = text.splitlines()
    for name in names:
        hits = [i for i, line in enumerate(lines) if re.match(rf"^ {{4}}{re.escape(name)} +\S", line)]
        assert len(hits) == 1, f"{name!r} is not listed with its help on one line:\n{text}"
        after = lines[hits[0] + 1] if hits[0] + 1 < len(lines) else ""
        assert not re.match(r"^ {10,}\S", after), f"the help of {name!r} wraps onto a second line:\n{text}"


@pytest.mark.parametrize("columns", ["80", "200"])
def test_top_level_help_lists_every_command_on_one_line(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    parser = build_parser()
    names = list(_choices(parser))
    assert {"encrypt", "train", "evaluate", "experiment", "security-report", "attack"} <= set(names)
    _assert_one_line_each(parser.format_help(), names)


def test_experiment_help_lists_every_experiment_on_one_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    experiment = _choices(build_parser())["experiment"]
    names = list(_choices(experiment))
    assert len(names) >= 8 and "frontier" in names
    _assert_one_line_each(experiment.format_help(), names)
