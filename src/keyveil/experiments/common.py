"""Shared pieces of the experiments: padding, predictions, picture grids, Markdown/JSON reports, timing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data import ImageDataset
from ..engine import to_input
from ..pictures import save_grid  # re-exported: the one renderer of labelled picture grids

__all__ = ["PaddedDataset", "predict", "save_grid", "markdown_table", "write_report", "Timer"]


class PaddedDataset(ImageDataset):
    """``base`` with every image zero-padded (centred) to a multiple of ``multiple`` pixels per side.

    Lets every scheme (block sizes 4 or 16, patch sizes 8 or 16) run on the
    same images, so all schemes are compared on identical inputs.

    Examples:
        >>> import torch
        >>> from keyveil.data import TensorImageDataset
        >>> ds = TensorImageDataset(torch.ones(2, 1, 28, 26, dtype=torch.uint8), [0, 1], name="t", split="train",
        ...                         classes=["a", "b"])
        >>> p = PaddedDataset(ds, 16)
        >>> p.size, int(p[0][0].sum()), int(p[0][0][0, 2, 3])
        ((32, 32), 728, 1)
    """

    def __init__(self, base: ImageDataset, multiple: int) -> None:
        self.base, self.multiple = base, int(multiple)
        h, w = base.size
        self.pad_h, self.pad_w = (-h) % self.multiple, (-w) % self.multiple
        self.name, self.split, self.classes = base.name, base.split, list(base.classes)
        self.channels, self.size = base.channels, (h + self.pad_h, w + self.pad_w)

    @property
    def targets(self) -> torch.Tensor:
        return self.base.targets

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices):
        x, y = self.base.get_batch(indices)
        t, left = self.pad_h // 2, self.pad_w // 2
        return F.pad(x, (left, self.pad_w - left, t, self.pad_h - t)), y


@torch.no_grad()
def predict(model: nn.Module, dataset: ImageDataset, *, batch_size: int = 500) -> torch.Tensor:
    """The predicted class of every image of ``dataset`` (int64, in order)."""
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [model(to_input(x, dev)).argmax(1).cpu()
           for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike[str], stem: str, markdown: str, data: dict[str, Any]) -> list[Path]:
    """Write ``{stem}.md`` and ``{stem}.json`` under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(markdown.rstrip() + "\n")
    js.write_text(json.dumps(data, indent=2) + "\n")
    return [md, js]


@dataclass
class Timer:
    """Wall time and CPU time (all threads of this process) since creation."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    @property
    def cpu(self) -> float:
        return time.process_time() - self.cpu0
