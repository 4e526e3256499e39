"""Redraw the pictures the documentation shows from the committed result JSON (``make figures``).

The plots are drawn by the same functions the experiments use, from ``results/*/*.json``; no experiment
is run. The PNGs are committed under ``docs/assets/`` so that RESULTS.md shows them on any Git host too.
"""

from __future__ import annotations

import json
from pathlib import Path

from keyveil.experiments import frontier, optimizers

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "docs" / "assets"


def main() -> None:
    front = json.loads((ROOT / "results" / "frontier" / "frontier.json").read_text())
    print(frontier._plot(front["rows"], ASSETS / "frontier.png", front["chance"]))
    opt = json.loads((ROOT / "results" / "optimizers" / "optimizers.json").read_text())
    print(optimizers._plot(opt["groups"], ASSETS / "optimizers.png", epochs=opt["epochs"]))


if __name__ == "__main__":
    main()
