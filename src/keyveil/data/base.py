"""The dataset contract: uint8 ``(C,H,W)`` images and integer labels.

Every keyveil dataset yields ``(image, label)`` with ``image`` a uint8
``(C,H,W)`` tensor, so schemes apply exactly (bit for bit) before any
conversion to float. Datasets also fetch whole batches at once
(:meth:`ImageDataset.get_batch`, used by ``DataLoader`` through
``__getitems__``), which lets an encrypted view scramble a batch with one
gather instead of one call per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "TensorImageDataset", "DatasetInfo", "stratified_split"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset (travels in checkpoints)."""

    name: str
    split: str
    num_classes: int
    channels: int
    size: tuple[int, int]
    classes: list[str] = field(default_factory=list)
    length: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "split": self.split, "num_classes": self.num_classes,
                "channels": self.channels, "size": list(self.size), "classes": list(self.classes),
                "length": self.length}


class ImageDataset(Dataset):
    """Base class: labelled uint8 images of one size.

    Subclasses set :attr:`name`, :attr:`split`, :attr:`classes`,
    :attr:`channels`, :attr:`size` and implement :meth:`get_batch`
    (and ``__len__``). ``dataset[i]`` is ``(uint8 (C,H,W) tensor, int label)``.
    """

    name: str = ""
    split: str = ""
    classes: list[str]
    channels: int
    size: tuple[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, self.split, self.num_classes, self.channels, tuple(self.size),
                           list(self.classes), len(self))

    @property
    def targets(self) -> torch.Tensor:
        """All labels as an int64 tensor (subclasses may override with a stored tensor)."""
        return self.get_batch(range(len(self)))[1]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B,C,H,W)`` uint8 and labels ``(B,)`` int64 for ``indices``."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        x, y = self.get_batch([index % len(self)])
        return x[0], int(y[0])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        x, y = self.get_batch(indices)
        return list(zip(x.unbind(0), y.tolist()))

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageDataset:
        """A view holding only ``indices`` (keeps name, classes and geometry)."""
        return SubsetImageDataset(self, indices)

    def limit(self, n: int | None, *, seed: int = 0) -> ImageDataset:
        """At most ``n`` images, a fixed stratified choice (all of them if ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"limit must be at least 1, got {n}")
        take = stratified_split(self.targets, n / len(self), seed=seed)[0]
        return self.subset(take[:n])

    def __repr__(self) -> str:
        c, (h, w) = self.channels, self.size
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes}, shape=({c},{h},{w}))")


class TensorImageDataset(ImageDataset):
    """A dataset held in memory: ``images`` uint8 ``(N,C,H,W)``, ``labels`` ``(N,)``.

    Examples:
        >>> import torch
        >>> ds = TensorImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
        ...                         name="toy", split="train", classes=["a", "b"])
        >>> x, y = ds[1]
        >>> x.shape, x.dtype, y
        (torch.Size([1, 8, 8]), torch.uint8, 1)
        >>> len(ds.limit(2)), ds.limit(2).num_classes
        (2, 2)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int], *, name: str, split: str,
                 classes: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N,C,H,W) tensor, got {images.dtype} {tuple(images.shape)}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.images, self.labels = images, labels
        self.name, self.split, self.classes = name, split, list(classes)
        self.channels, self.size = images.shape[1], (images.shape[2], images.shape[3])

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices,
                              dtype=torch.int64)
        return self.images[idx], self.labels[idx]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageDataset(self.images[idx], self.labels[idx], name=self.name, split=self.split,
                                  classes=self.classes)


class SubsetImageDataset(ImageDataset):
    """The images ``indices`` of another dataset (see :meth:`ImageDataset.subset`)."""

    def __init__(self, base: ImageDataset, indices: Sequence[int] | torch.Tensor) -> None:
        self.base, self.indices = base, torch.as_tensor(indices, dtype=torch.int64)
        self.name, self.split, self.classes = base.name, base.split, list(base.classes)
        self.channels, self.size = base.channels, base.size

    def __len__(self) -> int:
        return self.indices.numel()

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.get_batch(self.indices[torch.as_tensor(list(indices), dtype=torch.int64)].tolist())


def stratified_split(labels: torch.Tensor | Sequence[int], train_fraction: float, *,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stratified split: ``(train_indices, test_indices)``, both sorted.

    Within each class, items are ordered by a stable argsort of 64-bit words
    from ``PCG64(seed)`` (stable across numpy versions), and the first
    ``round(train_fraction * count)`` go to training.

    Examples:
        >>> tr, te = stratified_split([0, 0, 0, 0, 1, 1, 1, 1], 0.75)
        >>> len(tr), len(te), sorted(set(tr.tolist()) | set(te.tolist())) == list(range(8))
        (6, 2, True)
    """
    y = np.asarray(torch.as_tensor(labels).tolist() if isinstance(labels, torch.Tensor) else list(labels))
    order = np.argsort(np.random.PCG64(seed).random_raw(len(y)), kind="stable")
    train, test = [], []
    for c in np.unique(y):
        members = order[y[order] == c]
        k = int(round(train_fraction * len(members)))
        train.extend(members[:k].tolist())
        test.extend(members[k:].tolist())
    return torch.tensor(sorted(train), dtype=torch.int64), torch.tensor(sorted(test), dtype=torch.int64)
