"""The attacks' view of the dataset registry: whole uint8 tensors and real labels.

Attacks take the names ``keyveil datasets`` lists (``fashion-mnist``,
``att-faces``, ``att-faces-heldout``, ``cifar10-sample``, ``photos``,
``mnist5k``, …); the names the attacks used before the registry existed,
``orl`` and ``cifar``, still work with a :class:`FutureWarning`. Everything
returns uint8 ``(N,C,H,W)`` images and int64 labels; nothing is downloaded.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch

from ..data import ImageDataset, dataset_source, list_datasets
from ..data.registry import DATASETS as _REGISTRY

__all__ = ["load", "dataset_name", "attack_datasets", "fashion_mnist", "orl_faces", "photos", "cifar_samples",
           "DEPRECATED_NAMES"]

DEPRECATED_NAMES = {"orl": "att-faces-heldout", "cifar": "cifar10-sample"}
"""Old attack dataset names → the registry's (the images and splits are the same; labels are now real)."""

_NOT_CLASSIFICATION = ("fashion-canvas", "coco", "imagefolder")  # boxes, or a --data-dir the attacks do not take


def attack_datasets() -> list[str]:
    """The registered datasets an attack can run on (the detection sets and ``imagefolder`` excluded)."""
    return [n for n in list_datasets() if n not in _NOT_CLASSIFICATION]


def dataset_name(name: str) -> str:
    """The registry name of ``name``: itself, or the new name of a deprecated one (with a ``FutureWarning``).

    Raises:
        UnknownDatasetError: not a registered name (with a "did you mean").
    """
    if name in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[name]
        warnings.warn(f"dataset name {name!r} is deprecated; use {new!r} (the names `keyveil datasets` lists)",
                      FutureWarning, stacklevel=3)
        return new
    _REGISTRY.get(name)  # raises with a "did you mean"
    return name


@lru_cache(maxsize=6)
def _dataset(name: str, split: str) -> ImageDataset:
    source = dataset_source(name)
    if split not in source.splits:  # one-split sets (photos, cifar10-sample) give it for both
        split = source.splits[-1]
    return source.load(split)


def load(name: str, split: str = "test", n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 ``(N,C,H,W)``) and labels (int64) of the first ``n`` images of a registered dataset.

    Datasets with one split (``photos``, ``cifar10-sample``) return it for
    both ``train`` and ``test``.

    Examples:
        >>> x, y = load("att-faces", "test", 4)
        >>> tuple(x.shape), y.tolist()
        ((4, 1, 112, 92), [0, 0, 0, 1])
    """
    ds = _dataset(dataset_name(name), split)
    end = len(ds) if n is None else min(n, len(ds))
    images = getattr(ds, "images", None)
    if isinstance(images, torch.Tensor):
        return images[:end], ds.targets[:end]
    return ds.get_batch(list(range(end)))


def fashion_mnist(split: str = "train", n: int | None = None, *, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images ``(n,1,28,28)`` uint8 and labels (``split``: train or test), from ``offset``."""
    ds = _dataset("fashion-mnist", split)
    end = None if n is None else offset + n
    return ds.images[offset:end], ds.targets[offset:end]


def orl_faces(people: range = range(1, 41), *, size: tuple[int, int] = (96, 80)) -> tuple[torch.Tensor, torch.Tensor]:
    """AT&T/ORL faces ``(10*len(people),1,H,W)`` (centre-cropped to ``size``) and person ids (1–40), in shot order.

    Built from the registry's ``att-faces`` (its train split holds shots 1–7
    of each person, its test split shots 8–10, both in person order).
    """
    train, test = _dataset("att-faces", "train"), _dataset("att-faces", "test")
    h, w = train.size
    both = torch.cat([train.images.reshape(40, 7, 1, h, w), test.images.reshape(40, 3, 1, h, w)], 1)
    idx = torch.tensor(list(people)) - 1
    x = both[idx].reshape(-1, 1, h, w)
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    y = torch.tensor(list(people)).repeat_interleave(10)
    return x[..., top: top + size[0], left: left + size[1]].contiguous(), y


def photos() -> torch.Tensor:
    """The registry's ``photos``: colour photos from ``skimage.data``, ``(8,3,224,224)``."""
    return _dataset("photos", "test").images


def cifar_samples() -> torch.Tensor:
    """The 20 real CIFAR-10 test images foolbox ships: ``(20,3,32,32)`` (the registry's ``cifar10-sample``)."""
    return _dataset("cifar10-sample", "test").images
